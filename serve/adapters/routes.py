"""Admin API for adapters: register + load, list, show, drain + remove. Mounted by serve/app.py.

POST   /v1/adapters          {"name", "path", "base"?, "version"?, "pinned"?}  -> 201 adapter record
GET    /v1/adapters          -> {"object": "list", "data": [records]}
GET    /v1/adapters/{name}   -> record
DELETE /v1/adapters/{name}   -> record as it was, "deleted": true
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from vlmgate.serve.errors import InvalidRequestError, ModelNotFoundError

if TYPE_CHECKING:
    from vlmgate.serve.app import Gateway

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,127}")
_FIELDS = {"name": str, "path": str, "base": str, "version": str, "pinned": bool, "load": bool}


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def build_router(gateway: Gateway) -> APIRouter:
    router = APIRouter(prefix="/v1/adapters", tags=["adapters (admin)"])

    @router.post("", status_code=201, summary="Register an adapter from the adapter store and load it.")
    async def register(request: Request) -> Response:
        gateway.authorizer.admin(request)
        body = _parse_body(await request.body())
        record = await gateway.adapters.register(
            body["name"],
            body["path"],
            body.get("base"),
            body.get("version"),
            bool(body.get("pinned")),
            body.get("load") is not False,
        )
        return _json(record.public(), 201)

    @router.get("", summary="List adapters with their state.")
    async def list_adapters(request: Request) -> Response:
        gateway.authorizer.admin(request)
        return _json({"object": "list", "data": [r.public() for r in gateway.adapters.registry.list()]})

    @router.get("/{name}", summary="One adapter's record.")
    async def show(name: str, request: Request) -> Response:
        gateway.authorizer.admin(request)
        record = gateway.adapters.registry.get(name)
        if record is None:
            raise ModelNotFoundError(f"The adapter '{name}' does not exist.", param="name")
        return _json(record.public())

    @router.delete("/{name}", summary="Drain in-flight requests, unload and forget an adapter.")
    async def remove(name: str, request: Request) -> Response:
        gateway.authorizer.admin(request)
        record = await gateway.adapters.remove(name)
        return _json({**record.public(), "deleted": True})

    return router


def _parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequestError("The body must be a JSON object.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The body must be a JSON object.")
    for key, value in body.items():
        if key not in _FIELDS:
            raise InvalidRequestError(f"Unrecognized argument: {key}", param=key, code="unknown_parameter")
        if not isinstance(value, _FIELDS[key]) and value is not None:
            raise InvalidRequestError(f"'{key}' must be a {_FIELDS[key].__name__}.", param=key, code="invalid_type")
    for key in ("name", "path"):
        if not body.get(key):
            raise InvalidRequestError(f"Missing required parameter: '{key}'.", param=key, code="missing")
    if not _NAME.fullmatch(body["name"]) or "@" in body["name"]:
        raise InvalidRequestError(
            "'name' must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit.", param="name"
        )
    return body
