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
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from vlmgate import __version__
from vlmgate.serve import observability, proxy
from vlmgate.serve.adapters.manager import AdapterManager
from vlmgate.serve.adapters.registry import AdapterRecord, AdapterRegistry
from vlmgate.serve.adapters.routes import build_router as adapter_router
from vlmgate.serve.admission import Admission
from vlmgate.serve.auth import Authorizer
from vlmgate.serve.config import GatewayConfig
from vlmgate.serve.engines import create_engine
from vlmgate.serve.engines.base import Engine
from vlmgate.serve.errors import (
    APIError,
    EngineUnavailableError,
    InvalidRequestError,
    ModelNotFoundError,
    PayloadTooLargeError,
)
from vlmgate.serve.lifecycle import RequestObservers, RequestTrace
from vlmgate.serve.validation import validate_chat_request

log = logging.getLogger("vlmgate.gateway")
_CREATED = int(time.time())


class JSONBytes(Response):
    media_type = "application/json"


class SSEResponse(StreamingResponse):
    """A streaming response that always closes its generator (and so the engine request), however it ends."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


class Gateway:
    """State shared by the routes: configuration, engines, their HTTP clients, lifecycle observers."""

    def __init__(self, config: GatewayConfig, engines: dict[str, Engine] | None = None) -> None:
        self.config = config
        self.engines: dict[str, Engine] = engines or {
            m.name: create_engine(m, config.limits)
            for m in config.models  # type: ignore[misc]
        }
        self.clients: dict[str, proxy.EngineClient] = {}
        self.observers = RequestObservers()
        self.admission = Admission()
        self.authorizer = Authorizer(config.auth)
        store = Path(config.adapters.store_dir).expanduser()
        store.mkdir(parents=True, exist_ok=True)
        registry = AdapterRegistry(config.adapters.registry_path or store / "registry.sqlite3")
        self.adapters = AdapterManager(registry, self.engines, store, config.adapters.drain_timeout_s)

    async def start(self) -> None:
        timeouts = {m.name: m.engine.request_timeout_s for m in self.config.models}
        for name, engine in self.engines.items():
            self.clients[name] = proxy.EngineClient(engine, timeouts.get(name, 600.0))
        await asyncio.gather(*(engine.start() for engine in self.engines.values()))
        log.info("gateway ready: serving %s", ", ".join(self.engines))

    async def stop(self) -> None:
        for client in self.clients.values():
            await client.close()
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

    app = FastAPI(
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

    @app.post("/v1/chat/completions", tags=["openai"], summary="Chat completion (text and images; streaming).")
    async def chat_completions(request: Request) -> Response:
        return await _chat(gateway, request)

    return app


def _shut_down_if_start_failed(task: asyncio.Task[None]) -> None:
    """An engine that cannot start is fatal at boot: log why and stop the server (as if by SIGTERM)."""
    if task.cancelled() or task.exception() is None:
        return
    log.error("could not start the engines, shutting down: %s", task.exception())
    os.kill(os.getpid(), signal.SIGTERM)


async def _chat(gateway: Gateway, request: Request) -> Response:
    trace = RequestTrace(model="")
    try:
        gateway.authorizer.inference(request)
        body = await _read_json(request, gateway.config.limits.max_request_bytes)
        chat = validate_chat_request(body, gateway.config.limits)
        engine, adapter = gateway.resolve(chat.model)
        trace.model, trace.adapter, trace.stream = engine.model_name, adapter.name if adapter else "", chat.stream
        trace.image_count, trace.image_preprocess_s = chat.image_count, chat.image_preprocess_s
        if not engine.ready and not await engine.wait_ready(timeout_s=10):
            raise EngineUnavailableError(
                f"The engine for '{engine.model_name}' is not ready (starting or restarting). Retry shortly.",
                headers={"Retry-After": "5"},
            )
        if adapter is not None:
            await gateway.adapters.acquire(adapter)  # loads it on first use (one load, however many ask at once)
            trace.holds_adapter = True
        upstream = dict(chat.body, model=engine.request_model_name(adapter.name if adapter else None))
        client = gateway.clients[engine.model_name]
        if chat.stream:
            upstream["stream_options"] = {**(chat.body.get("stream_options") or {}), "include_usage": True}
        await gateway.admission.acquire(trace)
        trace.admitted = True
        trace.forwarded = time.perf_counter()
        if not chat.stream:
            payload = await proxy.complete(client, upstream, trace)
            _end(gateway, trace)
            return JSONBytes(payload)
        resp = await client.open("/v1/chat/completions", upstream)
    except APIError as err:
        trace.status, trace.error_type = err.status, err.type
        _end(gateway, trace)
        raise
    except BaseException:
        _end(gateway, trace)
        raise
    return SSEResponse(
        _finish_stream(gateway, proxy.stream(resp, trace, chat.include_usage), trace),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _finish_stream(gateway: Gateway, events: AsyncIterator[bytes], trace: RequestTrace) -> AsyncIterator[bytes]:
    completed = False
    try:
        async for event in events:
            yield event
            if event.startswith(b"data: [DONE]"):
                # Everything the client needs is sent: a client that hangs up now has not aborted anything, and
                # the request is recorded at once (before the client can, say, scrape /metrics).
                completed = True
                break
        else:
            completed = True
    finally:
        await events.aclose()  # type: ignore[attr-defined]
        if not completed:
            trace.client_disconnected = True
            trace.status, trace.error_type = 499, "client_disconnected"
        _end(gateway, trace)


def _end(gateway: Gateway, trace: RequestTrace) -> None:
    """A request is over: free its admission slot and adapter hold (if any) and tell the observers."""
    if trace.admitted:
        trace.admitted = False
        gateway.admission.release()
    if trace.holds_adapter:
        trace.holds_adapter = False
        gateway.adapters.release(trace.adapter)
    gateway.observers.request_end(trace)


async def _read_json(request: Request, max_bytes: int) -> Any:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLargeError(f"The request body exceeds the {max_bytes}-byte limit.")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise PayloadTooLargeError(f"The request body exceeds the {max_bytes}-byte limit.")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"We could not parse the JSON body of your request ({exc}). The body must be a JSON object.",
            code="invalid_json",
        ) from None


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
