"""A stub engine HTTP server for unit tests: canned replies per (method, path), every request recorded.

It runs an aiohttp app on a free local port in a thread of its own, so that both async engine code and the
synchronous FastAPI TestClient can talk to it. It is a stub: it answers what a test tells it to, nothing more.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from vlmgate.serve.engines.process import free_port


@dataclass
class Recorded:
    method: str
    path: str
    json: Any
    authorization: str | None = None


@dataclass
class StubEngineServer:
    """Answers `replies[(method, path)] = (status, json_body)`; unknown routes answer 404."""

    replies: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reply(self, method: str, path: str, status: int, body: Any) -> None:
        self.replies[(method, path)] = (status, body)

    def sent(self, method: str | None = None, path: str | None = None) -> list[Recorded]:
        return [r for r in self.requests if (method in (None, r.method)) and (path in (None, r.path))]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        self.requests.append(Recorded(request.method, request.path, body, request.headers.get("Authorization")))
        status, payload = self.replies.get((request.method, request.path), (404, {"detail": "Not Found"}))
        return web.json_response(payload, status=status)

    def start(self) -> StubEngineServer:
        self.port = free_port()
        started = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            started.set()

        def run() -> None:
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="stub-engine", daemon=True)
        self._thread.start()
        started.wait(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
