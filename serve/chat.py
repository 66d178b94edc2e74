"""`POST /v1/chat/completions`, served straight on the ASGI interface: the gateway's hot path.

Every streamed token costs the gateway one read from the engine and one write to the client, so this path skips
what a framework adds per chunk (middleware send wrappers, a task group per streaming response, generator
chains) and writes each batch of SSE events to the server's transport with one `send`: the events that arrived
in one read from the engine leave in one write, unchanged and in order. The app (serve/app.py) routes this
path here before its middleware stack; the FastAPI route of the same path calls the same function, so the two
cannot drift apart.

Lifecycle of a request: authenticate, read and validate the body (images decoded, limits enforced), resolve the
model (base or adapter), wait for a ready engine, acquire the adapter (loading it once), take an admission slot,
forward. Whatever happens, `_end` frees the slot and the adapter exactly once and hands the trace to observers.
A client that hangs up mid-stream is noticed at once (a waiter on `receive`), and the engine connection is
closed, which makes the engine abort the request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from vlmgate.serve import proxy
from vlmgate.serve.errors import (
    APIError,
    EngineUnavailableError,
    InvalidRequestError,
    PayloadTooLargeError,
    UpstreamError,
)
from vlmgate.serve.lifecycle import RequestTrace
from vlmgate.serve.upstream import ClientWriter, StreamConnection, UpstreamPool
from vlmgate.serve.validation import validate_chat_request

if TYPE_CHECKING:
    from vlmgate.serve.app import Gateway

log = logging.getLogger("vlmgate.gateway")

PATH = "/v1/chat/completions"
_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]  # fmt: skip
_SERVER_ERROR = APIError("Internal server error; the gateway logged the details.", status=500)
_SERVER_ERROR.type = "server_error"


async def chat_completions(gateway: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    """Serve one chat completion (streaming or not) as an ASGI app; never raises for a request's own faults."""
    trace = RequestTrace(model="")
    try:
        request = Request(scope, receive)
        gateway.authorizer.inference(request)
        body = await read_json(request, gateway.config.limits.max_request_bytes)
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
            await _respond(send, 200, payload)
            return
        pool = gateway.streams[engine.model_name]
        connection = await pool.open(PATH, upstream, trace, chat.include_usage)
    except APIError as err:
        trace.status, trace.error_type = err.status, err.type
        _end(gateway, trace)
        headers = [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
        await _respond(send, err.status, err.json_bytes(), headers)
        return
    except Exception:
        trace.status, trace.error_type = 500, "server_error"
        _end(gateway, trace)
        log.exception("unhandled error on POST %s", PATH)
        await _respond(send, 500, _SERVER_ERROR.json_bytes())
        return
    except BaseException:  # cancelled: the server is shutting down
        _end(gateway, trace)
        raise
    await _relay(gateway, pool, connection, trace, receive, send)


async def _relay(
    gateway: Gateway, pool: UpstreamPool, connection: StreamConnection, trace: RequestTrace, receive: Receive,
    send: Send,
) -> None:  # fmt: skip
    """Stream the engine's SSE events to the client (written from the engine connection's callbacks, see
    serve/upstream.py). Ends the request exactly once, however the stream ends."""
    # Waits for the client to hang up; if it does, dropping the engine connection aborts the generation at once,
    # even while the engine is still working on the first token.
    hangup = asyncio.ensure_future(receive())
    hangup.add_done_callback(lambda waiter: waiter.cancelled() or connection.abort())
    transport = connection.transport
    assert transport is not None
    writer = ClientWriter(send, transport.pause_reading, transport.resume_reading)
    connection.on_done = lambda: _end(gateway, trace)  # at [DONE], before the client sees it
    failure: bytes | None = None
    try:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        connection.attach(writer.write)
        async with asyncio.timeout(pool.request_timeout_s):
            await asyncio.shield(connection.finished)
    except TimeoutError:
        trace.status, trace.error_type = 504, "engine_timeout"
        failure = proxy.error_event(UpstreamError("The engine did not finish in time.", status=504,
                                                  code="engine_timeout"))  # fmt: skip
    except (ConnectionError, OSError, UpstreamError) as exc:
        if not hangup.done():
            trace.status, trace.error_type = 502, "upstream_error"
            failure = proxy.error_event(
                UpstreamError(f"The engine connection failed mid-stream ({exc.__class__.__name__}).")
            )
    finally:
        disconnected = hangup.done() and not hangup.cancelled()
        hangup.cancel()
        finished = connection.finished
        complete = finished.done() and not finished.cancelled() and finished.exception() is None
        if disconnected or not complete:
            connection.abort()  # the engine sees the disconnect and stops generating
        if disconnected and trace.end is None:
            trace.client_disconnected = True
            trace.status, trace.error_type = 499, "client_disconnected"
        _end(gateway, trace)
    if disconnected:
        return
    await writer.flush()  # a slow client's last writes; the connection stays ours until then (its reads paused)
    if complete:
        pool.release(connection)  # back to the pool for the next request
    await send({"type": "http.response.body", "body": failure or b"", "more_body": False})


def _end(gateway: Gateway, trace: RequestTrace) -> None:
    """A request is over: free its admission slot and adapter hold (if any) and tell the observers (once)."""
    if trace.end is not None:
        return
    if trace.admitted:
        trace.admitted = False
        gateway.admission.release(trace)
    if trace.holds_adapter:
        trace.holds_adapter = False
        gateway.adapters.release(trace.adapter)
    gateway.observers.request_end(trace)


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    start_headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": start_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def read_json(request: Request, max_bytes: int) -> Any:
    """The request body as JSON, refused beyond max_bytes (declared or actual) and when it does not parse."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLargeError(f"The request body exceeds the {max_bytes}-byte limit.")
    body = bytearray()
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
