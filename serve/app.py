"""The gateway's HTTP app: OpenAI-compatible routes, health/readiness, and the one error boundary.

Build with `create_app(config)`; `vlmgate serve` runs it under uvicorn. The lifespan starts every configured
engine (in parallel) and stops them on shutdown. Known errors (`APIError`) become OpenAI-style JSON with their
4xx/5xx status; anything else is logged with its traceback and answered with a generic 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from vlmgate import __version__
from vlmgate.serve import chat, observability, proxy
from vlmgate.serve.adapters.manager import AdapterManager
from vlmgate.serve.adapters.registry import AdapterRecord, AdapterRegistry
from vlmgate.serve.adapters.routes import build_router as adapter_router
from vlmgate.serve.admission import Admissions
from vlmgate.serve.auth import Authorizer
from vlmgate.serve.config import GatewayConfig
from vlmgate.serve.engines import create_engine
from vlmgate.serve.engines.base import Engine
from vlmgate.serve.errors import (
    APIError,
    InvalidRequestError,
    ModelNotFoundError,
)
from vlmgate.serve.lifecycle import RequestObservers
from vlmgate.serve.upstream import UpstreamPool

log = logging.getLogger("vlmgate.gateway")
_CREATED = int(time.time())


class JSONBytes(Response):
    media_type = "application/json"


class Gateway:
    """State shared by the routes: configuration, engines, their HTTP clients, lifecycle observers."""

    def __init__(self, config: GatewayConfig, engines: dict[str, Engine] | None = None) -> None:
        self.config = config
        self.engines: dict[str, Engine] = engines or {
            m.name: create_engine(m, config.limits)
            for m in config.models  # type: ignore[misc]
        }
        self.clients: dict[str, proxy.EngineClient] = {}  # non-streaming requests
        self.streams: dict[str, UpstreamPool] = {}  # streaming requests (serve/upstream.py)
        self.observers = RequestObservers()
        bounds = {m.name: m.max_concurrent for m in config.models}
        self.admission = Admissions(config.admission, {name: bounds.get(name) for name in self.engines})
        self.authorizer = Authorizer(config.auth)
        store = Path(config.adapters.store_dir).expanduser()
        store.mkdir(parents=True, exist_ok=True)
        registry = AdapterRegistry(config.adapters.registry_path or store / "registry.sqlite3")
        self.adapters = AdapterManager(
            registry, self.engines, store, config.adapters.drain_timeout_s,
            drift_policy=config.adapters.drift_policy, drift_threshold=config.adapters.drift_threshold,
        )  # fmt: skip

    async def start(self) -> None:
        timeouts = {m.name: m.engine.request_timeout_s for m in self.config.models}
        for name, engine in self.engines.items():
            self.clients[name] = proxy.EngineClient(engine, timeouts.get(name, 600.0))
            self.streams[name] = UpstreamPool(engine, timeouts.get(name, 600.0))
        await asyncio.gather(*(engine.start() for engine in self.engines.values()))
        log.info("gateway ready: serving %s", ", ".join(self.engines))

    async def stop(self) -> None:
        for client in self.clients.values():
            await client.close()
        for pool in self.streams.values():
            pool.close()
        await asyncio.gather(*(engine.stop() for engine in self.engines.values()), return_exceptions=True)
        self.adapters.registry.close()

    def resolve(self, model: str) -> tuple[Engine, AdapterRecord | None]:
        """Map a request's `model` to (engine, adapter): a base name, or an adapter's `name` / `name@version`."""
        engine = self.engines.get(model)
        if engine is not None:
            return engine, None
        record = self.adapters.resolve(model)
        if record is not None and record.base_model in self.engines:
            return self.engines[record.base_model], record
        known = ", ".join(sorted(self.engines)) or "(none)"
        raise ModelNotFoundError(
            f"The model '{model}' does not exist. Base models: {known}; GET /v1/models lists adapters too.",
            param="model",
            code="model_not_found",
        )


class GatewayApp(FastAPI):
    """FastAPI, except that `POST /v1/chat/completions` goes straight to serve/chat.py, ahead of the middleware
    stack and the router: that path carries every token, and it handles its own errors."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == chat.PATH and scope["method"] == "POST":
            await chat.chat_completions(self.state.gateway, scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class _ASGIResponse(Response):
    """A route's answer produced by a raw ASGI function of the gateway."""

    def __init__(self, handler, gateway: Gateway) -> None:  # noqa: ANN001 - an ASGI handler of (gateway, ...)
        self.handler, self.gateway = handler, gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(self.gateway, scope, receive, send)


def create_app(config: GatewayConfig, engines: dict[str, Engine] | None = None) -> FastAPI:
    gateway = Gateway(config, engines)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Engines start in the background: the gateway answers at once (/health 200, /ready 503, requests 503
        # with Retry-After until the engine is up), and Ctrl-C or SIGTERM during a minute-long engine start-up
        # stops everything right away instead of waiting for the engine to finish starting.
        starting = asyncio.create_task(gateway.start(), name="start-engines")
        starting.add_done_callback(_shut_down_if_start_failed)
        try:
            yield
        finally:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
            await gateway.stop()

    app = GatewayApp(
        title="vlmgate",
        version=__version__,
        description="OpenAI-compatible gateway for vision-language models with hot-swapped LoRA adapters.",
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    _install_error_boundary(app)
    observability.install(app, gateway)
    app.include_router(adapter_router(gateway))

    @app.get("/health", tags=["ops"], summary="Liveness: the gateway process answers.")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", tags=["ops"], summary="Readiness: every engine is ready (503 otherwise).")
    async def ready() -> Response:
        engines = {name: engine.describe() for name, engine in gateway.engines.items()}
        ok = bool(engines) and all(engine.ready for engine in gateway.engines.values())
        body = {"status": "ready" if ok else "not_ready", "engines": engines}
        return JSONBytes(orjson.dumps(body), status_code=200 if ok else 503)

    @app.get("/v1/models", tags=["openai"], summary="Models served: bases (and their adapters).")
    async def list_models(request: Request) -> Response:
        gateway.authorizer.inference(request)
        data = [
            {"id": name, "object": "model", "created": _CREATED, "owned_by": "vlmgate", "root": engine.model_path,
             "parent": None, "max_model_len": engine.capabilities.max_model_len}
            for name, engine in gateway.engines.items()
        ]  # fmt: skip
        data += [
            {"id": r.name, "object": "model", "created": int(r.created_at), "owned_by": "vlmgate", "root": r.path,
             "parent": r.base_model, "version": r.version, "state": r.state}
            for r in gateway.adapters.registry.list()
            if r.state != "draining"
        ]  # fmt: skip
        return JSONBytes(orjson.dumps({"object": "list", "data": data}))

    @app.post(chat.PATH, tags=["openai"], summary="Chat completion (text and images; streaming).")
    async def chat_completions(request: Request) -> Response:
        return _ASGIResponse(chat.chat_completions, gateway)  # (GatewayApp serves this path before routing)

    return app


def _shut_down_if_start_failed(task: asyncio.Task[None]) -> None:
    """An engine that cannot start is fatal at boot: log why and stop the server (as if by SIGTERM)."""
    if task.cancelled() or task.exception() is None:
        return
    log.error("could not start the engines, shutting down: %s", task.exception())
    os.kill(os.getpid(), signal.SIGTERM)


def _install_error_boundary(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> Response:
        return JSONBytes(err.json_bytes(), status_code=err.status, headers=err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "invalid_request_error")
        body = {"error": {"message": str(err.detail), "type": kind, "param": None, "code": None}}
        return JSONBytes(orjson.dumps(body), status_code=err.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> Response:
        first = err.errors()[0] if err.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return JSONBytes(InvalidRequestError(str(first.get("msg", err)), param=param).json_bytes(), status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        body = {"error": {"message": "Internal server error; the gateway logged the details.",
                          "type": "server_error", "param": None, "code": None}}  # fmt: skip
        return JSONBytes(orjson.dumps(body), status_code=500)
