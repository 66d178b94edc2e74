"""The engine interface: everything the gateway needs from an engine, and nothing engine-specific outside it.

An engine serves one base model over HTTP (OpenAI-compatible chat API). It may be a process the gateway launches
and supervises, or a server it attaches to by URL. The gateway never branches on engine kind outside
serve/engines/: name mapping for adapters, adapter load/unload calls and metric names all live behind this class.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import ClassVar

log = logging.getLogger(__name__)


class EngineStartError(RuntimeError):
    """The engine did not become ready; the message carries its last log lines."""


@dataclass(frozen=True)
class EngineCapabilities:
    """What an engine can do, for validating requests and adapters before they reach it."""

    runtime_lora: bool = False
    max_lora_rank: int = 0
    max_loras: int = 0
    # Module-name suffixes LoRA may target (vLLM applies LoRA to the language model's linear layers only).
    lora_target_modules: frozenset[str] = frozenset()
    vision_lora: bool = False
    max_model_len: int | None = None
    max_images_per_prompt: int | None = None


@dataclass
class EngineStatus:
    ready: bool = False
    restarts: int = 0
    last_error: str | None = None
    extra: dict[str, object] = field(default_factory=dict)


ReadyCallback = Callable[["Engine"], Awaitable[None]]


class Engine(abc.ABC):
    """One base model on one engine: VLLMEngine, SGLangEngine (launch or attach), OpenAIUpstreamEngine (attach)."""

    kind: str = "abstract"
    # The gateway's metric names -> this engine's Prometheus names, for dashboards and load tests that read the
    # engine's /metrics next to the gateway's (e.g. "time_to_first_token_seconds" -> "sglang:time_to_first_...").
    metric_names: ClassVar[dict[str, str]] = {}

    def __init__(self, model_name: str, model_path: str) -> None:
        self.model_name = model_name  # the id clients use
        self.model_path = model_path  # what the engine loaded (shown as `root` in /v1/models)
        self.status = EngineStatus()
        self._ready_callbacks: list[ReadyCallback] = []
        self._ready_event = asyncio.Event()

    def auth_headers(self) -> dict[str, str]:
        """Headers every call to the engine carries (an API key, for an upstream that wants one)."""
        return {}

    # -- lifecycle ---------------------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def base_url(self) -> str:
        """Root URL of the engine's HTTP server, e.g. http://127.0.0.1:8001 (OpenAI API under /v1)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Launch (or attach) and return once the engine is ready; raise EngineStartError otherwise."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop a launched engine (and every process it started); detach from an attached one."""

    @property
    def ready(self) -> bool:
        return self.status.ready

    def on_ready(self, callback: ReadyCallback) -> None:
        """Run `callback(engine)` each time the engine becomes ready, including after a restart."""
        self._ready_callbacks.append(callback)

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait up to timeout_s for the engine to be ready (e.g. while it restarts)."""
        if self.status.ready:
            return True
        try:
            await asyncio.wait_for(self._ready_event.wait(), timeout_s)
        except TimeoutError:
            return False
        return self.status.ready

    async def _set_ready(self, ready: bool) -> None:
        self.status.ready = ready
        if not ready:
            self._ready_event.clear()
            return
        for callback in self._ready_callbacks:
            try:
                await callback(self)
            except Exception:  # a failing hook must not keep the engine out of service
                log.exception("ready callback %r failed for %s", callback, self.model_name)
        self._ready_event.set()

    # -- capabilities and naming ---------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def capabilities(self) -> EngineCapabilities: ...

    def request_model_name(self, adapter: str | None) -> str:
        """The `model` value the engine expects for the base (adapter None) or an adapter."""
        return adapter or self.model_name

    # -- adapters --------------------------------------------------------------------------------------------
    async def load_adapter(self, name: str, path: str, pinned: bool = False) -> None:
        raise NotImplementedError(f"{self.kind} engines have no runtime adapters")

    async def unload_adapter(self, name: str) -> None:
        raise NotImplementedError(f"{self.kind} engines have no runtime adapters")

    # -- introspection ---------------------------------------------------------------------------------------
    def describe(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "model": self.model_name,
            "url": self.base_url,
            "ready": self.status.ready,
            "restarts": self.status.restarts,
            "last_error": self.status.last_error,
        }
