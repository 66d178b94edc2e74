"""Streaming completions from an engine, relayed inside the socket callbacks: the gateway's per-token path.

Every token costs the gateway one read from the engine and one write to the client. A general HTTP client hands
each chunk to a task through a buffer and a future, which costs more CPU per token than the two system calls
themselves (measured: reading 64 tokens with aiohttp ~13 ms of CPU, with this protocol ~5 ms). Here the engine
connection's protocol parses the HTTP response (httptools), splits the SSE events (proxy.EventFilter) and writes
them to the client in the same callback, so a token costs about what a bare TCP relay pays.

The write goes through the ASGI `send` of the request, driven synchronously: servers complete it at once unless
the client is slow (uvicorn waits for its buffer to drain). Then the write is finished in a task, later events
queue behind it in order, and reading from the engine pauses until the client has caught up.

Connections are pooled per engine address and reused while the engine keeps them alive; one that the engine
closed just as it was reused is retried once on a fresh connection, before any byte of the answer arrived.
Non-streaming requests and admin calls use aiohttp (serve/proxy.py, serve/engines/supervised.py).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import SplitResult, urlsplit

import httptools
import orjson

from vlmgate.serve.engines.base import Engine
from vlmgate.serve.errors import EngineUnavailableError, UpstreamError, from_engine_response
from vlmgate.serve.lifecycle import RequestTrace
from vlmgate.serve.proxy import EventFilter

_IDLE_S = 3.0  # pooled connections idle longer than this are dropped (vLLM closes idle ones after 5 s)
Sink = Callable[[bytes], None]


class StreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to an engine; answers one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.address: tuple[str, int, bool] | None = None  # (host, port, tls): its pool in UpstreamPool
        self.closed = False
        self.idle_since = time.monotonic()
        self._reset()

    def _reset(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.headers_done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.status = 0
        self.got_bytes = False
        self.keep_alive = False
        self.error_body = bytearray()
        self.events: EventFilter | None = None
        self.sink: Sink | None = None
        self.on_done: Callable[[], None] | None = None
        self._early: list[bytes] = []  # answer bytes that arrived before a sink was attached

    # -- asyncio.Protocol ------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"The engine sent a malformed HTTP response ({exc})."))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.finished.done():
            self._fail(ConnectionResetError("the engine closed the connection"))

    # -- httptools callbacks ---------------------------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        if not self.headers_done.done():
            self.headers_done.set_result(self.status)

    def on_body(self, body: bytes) -> None:
        if self.status != 200:
            self.error_body += body
            return
        if self.events is None:
            return
        out = self.events.feed(body)
        if self.events.done and self.on_done is not None:
            self.on_done()  # recorded before the client can see [DONE]
            self.on_done = None
        if not out:
            return
        if self.sink is None:
            self._early.append(out)
        else:
            self.sink(out)

    def on_message_complete(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)

    # -- used by UpstreamPool and the relay ------------------------------------------------------------------------
    def attach(self, sink: Sink) -> None:
        """Start writing the answer's events to sink (those that arrived before are written first, in order)."""
        self.sink = sink
        if self._early:
            early, self._early = b"".join(self._early), []
            sink(early)

    def write_request(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        self.transport.write(head + body)

    def abort(self) -> None:
        """Drop the connection (the engine sees the disconnect and stops generating)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: BaseException) -> None:
        for future in (self.headers_done, self.finished):
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved here: whoever waits still gets it; nobody waiting is no error
        self.abort()


class UpstreamPool:
    """Pooled streaming connections to one engine (its address is read per request: it may restart elsewhere)."""

    def __init__(self, engine: Engine, request_timeout_s: float) -> None:
        self.engine = engine
        self.request_timeout_s = request_timeout_s
        self._idle: dict[tuple[str, int, bool], collections.deque[StreamConnection]] = collections.defaultdict(
            collections.deque
        )

    def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.abort()
        self._idle.clear()

    async def open(
        self, path: str, body: dict[str, Any], trace: RequestTrace, client_wants_usage: bool
    ) -> StreamConnection:
        """Send a streaming request; return the connection once a 200 answer started (its events are filtered
        into it from then on). An error status is raised as the matching APIError, with the engine's message."""
        url = urlsplit(self.engine.base_url)
        key = _address(url)
        payload = orjson.dumps(body)
        headers = "".join(f"{k}: {v}\r\n" for k, v in self.engine.auth_headers().items())
        head = (f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
                f"Accept: text/event-stream\r\n{headers}Content-Length: {len(payload)}\r\n\r\n").encode()  # fmt: skip
        for attempt in (1, 2):
            connection, reused = await self._connection(key, fresh=attempt == 2)
            connection.events = EventFilter(trace, client_wants_usage)
            connection.write_request(head, payload)
            try:
                async with asyncio.timeout(self.request_timeout_s):
                    status = await asyncio.shield(connection.headers_done)
            except TimeoutError:
                connection.abort()
                raise UpstreamError("The engine did not answer in time.", status=504, code="engine_timeout") from None
            except (ConnectionError, OSError) as exc:
                # A pooled connection the engine closed just as it was reused fails before any answer: retry once.
                if reused and not connection.got_bytes and attempt == 1:
                    continue
                raise EngineUnavailableError.unreachable(exc) from None
            if status != 200:
                try:
                    async with asyncio.timeout(30):
                        await asyncio.shield(connection.finished)
                except (TimeoutError, ConnectionError, OSError):
                    pass
                connection.abort()
                raise from_engine_response(status, bytes(connection.error_body))
            return connection
        raise AssertionError("unreachable")

    def release(self, connection: StreamConnection) -> None:
        """After a complete answer: back to the pool if the engine keeps it alive, else closed."""
        if connection.closed or not connection.keep_alive or not connection.finished.done():
            connection.abort()
            return
        connection._reset()
        connection.idle_since = time.monotonic()
        self._idle[connection.address].append(connection)  # type: ignore[index]

    async def _connection(self, key: tuple[str, int, bool], fresh: bool) -> tuple[StreamConnection, bool]:
        idle = self._idle[key]
        now = time.monotonic()
        while idle and not fresh:
            connection = idle.pop()  # the most recently used: the least likely to have been closed
            if not connection.closed and now - connection.idle_since < _IDLE_S:
                return connection, True
            connection.abort()
        host, port, tls = key
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(10):
                _, connection = await loop.create_connection(
                    StreamConnection, host, port, ssl=ssl.create_default_context() if tls else None
                )
        except (OSError, TimeoutError) as exc:
            raise EngineUnavailableError.unreachable(exc) from None
        connection.address = key
        return connection, False


def _address(url: SplitResult) -> tuple[str, int, bool]:
    tls = url.scheme == "https"
    return url.hostname or "127.0.0.1", url.port or (443 if tls else 80), tls


class ClientWriter:
    """Writes to the client through the request's ASGI `send`, synchronously when the server completes it at once.

    When a write has to wait (a slow client: the server's buffer is full), it is finished in a task, later writes
    queue behind it in order, and `pause()` / `resume()` stop and restart reading from the engine meanwhile."""

    def __init__(self, send: Callable[[dict[str, Any]], Coroutine[Any, Any, None]], pause: Callable[[], None],
                 resume: Callable[[], None]) -> None:  # fmt: skip
        self.send, self.pause, self.resume = send, pause, resume
        self._backlog: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    def write(self, data: bytes) -> None:
        if self._task is not None:
            self._backlog.append(data)
            return
        coro = self.send({"type": "http.response.body", "body": data, "more_body": True})
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return  # written
        except Exception as exc:  # the server refused the write: the client is gone
            self.error = exc
            return
        self.pause()
        self._task = asyncio.ensure_future(self._finish(coro, waiting_on))

    async def flush(self) -> None:
        """Wait until every write has gone out."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def _finish(self, coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
        try:
            await _resume(coro, waiting_on)
            while self._backlog:
                data, self._backlog = b"".join(self._backlog), []
                await self.send({"type": "http.response.body", "body": data, "more_body": True})
        except Exception as exc:
            self.error = exc
        finally:
            self._task = None
            self.resume()


async def _resume(coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
    """Run a coroutine that was started by hand and is suspended on `waiting_on` to its end, as a task would: wait
    until what it waits on is done, then let it go on (it reads the outcome itself)."""
    try:
        while True:
            if waiting_on is None:  # a bare yield (asyncio.sleep(0)): let the loop turn once
                await asyncio.sleep(0)
            else:
                await asyncio.wait([waiting_on])
            try:
                waiting_on = coro.send(None)
            except StopIteration:
                return
    except asyncio.CancelledError:
        coro.close()
        raise
