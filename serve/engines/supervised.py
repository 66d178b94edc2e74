"""The launch-or-attach lifecycle every HTTP engine shares (SGLang, generic upstreams; vLLM's is the same).

`SupervisedEngine` either launches the engine as a supervised child process (`command()` + `environment()`,
readiness polled on `ready_paths`, restarted with exponential backoff when it dies, ready callbacks run again so
that live adapters are reloaded) or attaches to a server already running at `config.url`, whose health it then
follows (not ready while it does not answer; ready callbacks re-run when it answers again). A subclass says how
to start its engine and what it can do; start/stop, readiness and the admin requests live here once.

Not run directly: `create_engine()` (serve/engines/__init__.py) builds the engine a model's config asks for.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import aiohttp
import orjson

from vlmgate.serve.config import EngineConfig, LimitsConfig
from vlmgate.serve.engines.base import Engine, EngineCapabilities, EngineStartError
from vlmgate.serve.engines.process import SupervisedProcess, free_port, port_is_free
from vlmgate.serve.errors import EngineUnavailableError, UpstreamError, from_engine_response

log = logging.getLogger(__name__)


class SupervisedEngine(Engine):
    """An engine reached over HTTP: launched and supervised by the gateway, or attached by URL."""

    # GET paths that must all answer 200 before the engine counts as ready.
    ready_paths: tuple[str, ...] = ("/health", "/v1/models")

    def __init__(self, model_name: str, model_path: str, config: EngineConfig, limits: LimitsConfig) -> None:
        super().__init__(model_name, model_path)
        self.config = config
        self.limits = limits
        self._attached = config.url is not None
        self._host = "127.0.0.1"
        self._port = 0
        self._process: SupervisedProcess | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._session: aiohttp.ClientSession | None = None

    # -- what a launching subclass provides -----------------------------------------------------------------------
    @property
    def capabilities(self) -> EngineCapabilities:
        """A runtime-LoRA engine's limits, from its config; `lora_targets()` says which modules it can adapt."""
        return EngineCapabilities(
            runtime_lora=True,
            max_lora_rank=self.config.max_lora_rank,
            max_loras=self.config.max_loras,
            lora_target_modules=self.lora_targets(),
            vision_lora=False,
            max_model_len=self.config.max_model_len,
            max_images_per_prompt=self.limits.max_images_per_request,
        )

    def lora_targets(self) -> frozenset[str]:
        return frozenset(self.config.lora_target_modules)

    def command(self, port: int) -> list[str]:
        """argv that starts the engine listening on port."""
        raise NotImplementedError(f"{self.kind} engines are attached by URL, never launched")

    def environment(self) -> dict[str, str]:
        """Environment of the launched engine process."""
        raise NotImplementedError(f"{self.kind} engines are attached by URL, never launched")

    async def after_ready(self) -> None:
        """Checks to run once the engine answers (e.g. that it serves the expected model); raise EngineStartError."""

    def auth_headers(self) -> dict[str, str]:
        name = self.config.api_key_env
        if not name:
            return {}
        key = os.environ.get(name)
        if not key:
            raise EngineStartError(
                f"engine.api_key_env of '{self.model_name}' names ${name}, which is not set: export it with the "
                f"API key of {self.base_url}"
            )
        return {"Authorization": f"Bearer {key}"}

    # -- engine interface ----------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return self.config.url if self.config.url else f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        self._stopping = False
        # Admin calls are rare: a fresh connection each time, never a pooled one the engine may have closed.
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30), connector=aiohttp.TCPConnector(force_close=True),
            headers=self.auth_headers(),
        )  # fmt: skip
        if self._attached:
            await self._wait_until_ready(process=None)
            await self.after_ready()
            await self._set_ready(True)
            self._supervisor = asyncio.create_task(self._watch_attached(), name=f"watch-{self.model_name}")
            return
        await self._launch()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"supervise-{self.model_name}")

    async def stop(self) -> None:
        self._stopping = True
        await self._set_ready(False)
        if self._supervisor is not None:
            self._supervisor.cancel()
        if self._process is not None:
            code = await self._process.stop()
            log.info("engine %s stopped (exit code %s)", self.model_name, code)
        if self._session is not None:
            await self._session.close()

    def kill_now(self) -> None:
        """Last-resort synchronous cleanup for signal/atexit paths."""
        if self._process is not None:
            self._process.kill_group_now()

    def describe(self) -> dict[str, object]:
        info = super().describe()
        info.update(attached=self._attached, pid=self._process.pid if self._process else None)
        return info

    # -- process management --------------------------------------------------------------------------------------
    async def _launch(self) -> None:
        # A restarted engine keeps its port, so that its URL (in /ready, dashboards, attached tools) stays valid.
        if not self._port or not port_is_free(self._host, self._port):
            self._port = free_port(self._host)
        self._process = SupervisedProcess(self.command(self._port), self.environment(), label=self.model_name)
        started = time.monotonic()
        await self._process.start()
        await self._wait_until_ready(self._process)
        await self.after_ready()
        log.info("engine %s ready at %s in %.1f s", self.model_name, self.base_url, time.monotonic() - started)
        await self._set_ready(True)

    async def _supervise(self) -> None:
        """Restart the engine with exponential backoff whenever it exits unexpectedly."""
        backoff_s = 1.0
        while not self._stopping:
            assert self._process is not None
            code = await self._process.wait()
            if self._stopping:
                return
            await self._set_ready(False)
            self.status.last_error = f"engine exited with code {code}"
            log.error("engine %s exited with code %s; last lines:\n%s", self.model_name, code, self._process.tail(20))
            if not self.config.restart_on_failure:
                return
            while not self._stopping:
                log.warning("restarting engine %s in %.0f s", self.model_name, backoff_s)
                await asyncio.sleep(backoff_s)
                self.status.restarts += 1
                healthy_since = time.monotonic()
                try:
                    await self._launch()
                except EngineStartError as exc:
                    self.status.last_error = str(exc).splitlines()[0]
                    log.error("%s", exc)
                    await self._process.stop()
                    backoff_s = min(backoff_s * 2, self.config.max_restart_backoff_s)
                    continue
                # Reset the backoff only after a restart that held; a crash loop keeps growing it.
                if time.monotonic() - healthy_since > 60:
                    backoff_s = 1.0
                break

    async def _watch_attached(self) -> None:
        """Follow an attached engine's health: not ready while it does not answer, ready again (and the ready
        callbacks re-run, reloading adapters an engine restart lost) once it does."""
        failures = 0
        while not self._stopping:
            await asyncio.sleep(self.config.health_check_interval_s)
            if await self._probe():
                failures = 0
                if not self.status.ready:
                    log.warning("attached engine %s at %s answers again", self.model_name, self.base_url)
                    self.status.restarts += 1
                    await self._set_ready(True)
                continue
            failures += 1
            # Two misses in a row: one slow answer under load is not an outage.
            if failures == 2 and self.status.ready:
                self.status.last_error = f"attached engine at {self.base_url} stopped answering"
                log.error("%s (%s)", self.status.last_error, self.model_name)
                await self._set_ready(False)

    async def _wait_until_ready(self, process: SupervisedProcess | None) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        while True:
            if process is not None and not process.running:
                code = await process.wait()
                raise EngineStartError(
                    f"engine {self.model_name} exited with code {code} during start-up. "
                    f"Last log lines:\n{process.tail(40)}"
                )
            if await self._probe():
                return
            if time.monotonic() > deadline:
                tail = process.tail(40) if process else "(attached engine: no logs)"
                raise EngineStartError(
                    f"engine {self.model_name} at {self.base_url} not ready after "
                    f"{self.config.startup_timeout_s:.0f} s (raise engine.startup_timeout_s if it is just slow). "
                    f"Last log lines:\n{tail}"
                )
            await asyncio.sleep(0.5)

    async def _probe(self) -> bool:
        assert self._session is not None
        try:
            for path in self.ready_paths:
                async with self._session.get(f"{self.base_url}{path}", timeout=aiohttp.ClientTimeout(total=5)) as r:
                    if r.status != 200:
                        return False
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False
        return True

    # -- HTTP helpers --------------------------------------------------------------------------------------------
    async def _get(self, path: str) -> bytes:
        """GET path; returns the body of a 200, raises the matching APIError otherwise."""
        return await self._request("GET", path, None)

    async def _post(self, path: str, payload: dict[str, object]) -> bytes:
        """POST payload as JSON; returns the body of a 200, raises the matching APIError otherwise."""
        return await self._request("POST", path, payload)

    async def _request(self, method: str, path: str, payload: dict[str, object] | None) -> bytes:
        status, body = await self._exchange(method, path, payload)
        if status != 200:
            raise from_engine_response(status, body)
        return body

    async def _exchange(self, method: str, path: str, payload: dict[str, object] | None) -> tuple[int, bytes]:
        """(status, body) of one request; an unreachable engine is a retryable EngineUnavailableError."""
        assert self._session is not None, "engine not started"
        try:
            async with self._session.request(method, f"{self.base_url}{path}", json=payload) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise EngineUnavailableError(
                f"The engine for '{self.model_name}' is not reachable ({exc.__class__.__name__}). Retry shortly.",
                headers={"Retry-After": "2"},
            ) from None


def parse_json(payload: bytes, what: str) -> object:
    """An engine's JSON reply; a body that is not JSON is an upstream fault, named with `what` it answered."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"engine answered {what} with a body that is not JSON: {payload[:200]!r}") from None
