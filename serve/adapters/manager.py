"""Adapters at run time: register, load on demand, evict least-recently-used, drain and remove, survive restarts.

Concurrency rules, each enforced by one per-adapter asyncio.Lock:
- concurrent first requests for a cold adapter cause exactly one engine load (the others wait on the lock and
  find it live);
- load and unload of the same adapter never overlap;
- an adapter with requests in flight is never evicted; removal drains them first.
The registry is written before and after every engine call, so an engine failure leaves a truthful record:
`loading` adapters whose engine died are loaded again when it comes back (the engine's ready callback).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from vlmgate.quantize.config import quantization_config
from vlmgate.quantize.drift import DEFAULT_THRESHOLD, PolicyMode, evaluate_drift_policy, read_result, weights_sha256
from vlmgate.quantize.drift import FILENAME as DRIFT_FILE
from vlmgate.serve.adapters.registry import AdapterRecord, AdapterRegistry
from vlmgate.serve.adapters.validation import resolve_in_store, validate_adapter
from vlmgate.serve.engines.base import Engine
from vlmgate.serve.errors import (
    APIError,
    ConflictError,
    EngineUnavailableError,
    InvalidRequestError,
    ModelNotFoundError,
    UpstreamError,
)

log = logging.getLogger(__name__)


class AdapterManager:
    def __init__(
        self,
        registry: AdapterRegistry,
        engines: dict[str, Engine],
        store_dir: Path,
        drain_timeout_s: float = 30.0,
        slot_wait_s: float = 30.0,
        on_load: Callable[[str], None] | None = None,
        drift_policy: PolicyMode = "warn",
        drift_threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        self.registry = registry
        self.engines = engines
        self.store_dir = store_dir
        self.drain_timeout_s = drain_timeout_s
        self.slot_wait_s = slot_wait_s
        self.drift_policy, self.drift_threshold = drift_policy, drift_threshold
        self._weights_sha256: dict[Path, str] = {}  # INT4 bases' weights hash, for the drift checks
        self._became_idle = asyncio.Event()  # set whenever an adapter's last in-flight request ends
        self.on_load = on_load or (lambda result: None)  # metrics hook: result in ok|error
        self._locks: dict[str, asyncio.Lock] = {}
        # One engine-slot lock per base: making room and loading are one step, or two concurrent loads could
        # both see a free slot and overfill the engine.
        self._slot_locks: dict[str, asyncio.Lock] = {name: asyncio.Lock() for name in engines}
        self._in_flight: dict[str, int] = {}
        self._drained: dict[str, asyncio.Event] = {}
        # Last use per adapter, for LRU eviction. Kept in memory: an fsync per request would cost more than the
        # request, and after a restart every adapter starts equal anyway.
        self._last_used: dict[str, float] = {}
        for engine in engines.values():
            engine.on_ready(self._reload_after_engine_start)

    # -- admin operations ----------------------------------------------------------------------------------------
    async def register(
        self,
        name: str,
        path: str,
        base: str | None = None,
        version: str | None = None,
        pinned: bool = False,
        load: bool = True,
    ) -> AdapterRecord:
        """Validate, record and (unless load=False: on first request) load an adapter.

        Validation problems are a 400 and leave no trace in the registry."""
        if self.registry.get(name) is not None:
            raise ConflictError(f"An adapter named '{name}' already exists; remove it first or pick another name.",
                                param="name")  # fmt: skip
        if name in self.engines:
            raise ConflictError(f"'{name}' is the name of a base model.", param="name")
        engine = self._base_engine(base)
        if not engine.capabilities.runtime_lora:
            raise InvalidRequestError(
                f"The engine serving '{engine.model_name}' has no runtime adapters.", param="base",
                code="adapters_not_supported",
            )  # fmt: skip
        adapter_dir = resolve_in_store(self.store_dir, path)
        base_dir = Path(engine.model_path) if Path(engine.model_path).is_dir() else None
        fingerprint = self._fingerprint(base_dir)
        info = await asyncio.to_thread(validate_adapter, adapter_dir, engine.capabilities, base_dir, fingerprint)
        drift = await asyncio.to_thread(self._drift_verdict, info.path, base_dir)
        if drift is not None and not drift["ok"]:
            raise InvalidRequestError(f"Adapter refused by the drift policy: {drift['message']}.", param="path",
                                      code="adapter_drift")  # fmt: skip
        if drift is not None and not drift["passed"]:
            log.warning("adapter %s on the INT4 base %s: %s", name, engine.model_name, drift["message"])
        record = AdapterRecord(
            name=name,
            version=version or "1",
            base_model=engine.model_name,
            path=str(info.path),
            digest=info.digest,
            rank=info.rank,
            alpha=info.alpha,
            target_modules=info.target_modules,
            base_fingerprint=info.base_fingerprint,
            pinned=pinned,
            extra={"drift": drift} if drift is not None else {},
        )
        try:
            self.registry.add(record)
        except KeyError:
            raise ConflictError(f"An adapter named '{name}' already exists.", param="name") from None
        if load:
            await self.ensure_loaded(name)
        return self.registry.get(name) or record

    async def remove(self, name: str) -> AdapterRecord:
        """Stop routing new requests to the adapter, wait for in-flight ones, unload it, forget it."""
        record = self._get(name)
        async with self._lock(name):
            self.registry.set_state(name, "draining")
            if self._in_flight.get(name):
                event = self._drained.setdefault(name, asyncio.Event())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), self.drain_timeout_s)
            engine = self.engines.get(record.base_model)
            if engine is not None and record.replicas:
                with contextlib.suppress(APIError, NotImplementedError, OSError):
                    await engine.unload_adapter(name)  # best effort: the engine may already have forgotten it
            self.registry.delete(name)
        self._locks.pop(name, None)
        return record

    # -- request path --------------------------------------------------------------------------------------------
    def resolve(self, model: str) -> AdapterRecord | None:
        """The adapter a request's `model` names (`name` or `name@version`), or None if it is not an adapter."""
        name, _, version = model.partition("@")
        record = self.registry.get(name)
        if record is None:
            return None
        if version and version != record.version:
            raise ModelNotFoundError(
                f"Adapter '{name}' is at version '{record.version}', not '{version}'.", param="model"
            )
        if record.state in ("draining",):
            raise ModelNotFoundError(f"The adapter '{name}' is being removed.", param="model")
        return record

    async def acquire(self, record: AdapterRecord) -> None:
        """Make sure the adapter is loaded and count the request as in flight (call release() when done)."""
        await self.ensure_loaded(record.name)
        self._in_flight[record.name] = self._in_flight.get(record.name, 0) + 1
        self._last_used[record.name] = time.monotonic()

    def release(self, name: str) -> None:
        count = self._in_flight.get(name, 1) - 1
        self._in_flight[name] = count
        if count <= 0:
            self._became_idle.set()
            if name in self._drained:
                self._drained[name].set()

    async def ensure_loaded(self, name: str) -> None:
        record = self._get(name)
        if record.state == "live" and record.replicas:
            return
        async with self._lock(name):
            record = self._get(name)  # re-read: another request may have loaded it while we waited
            if record.state == "live" and record.replicas:
                return
            if record.state == "draining":
                raise ModelNotFoundError(f"The adapter '{name}' is being removed.", param="model")
            engine = self.engines[record.base_model]
            async with self._slot_locks[engine.model_name]:
                await self._make_room(engine, keep=name)
                await self._load(engine, record)

    # -- internals -----------------------------------------------------------------------------------------------
    async def _load(self, engine: Engine, record: AdapterRecord) -> None:
        self.registry.set_state(record.name, "loading")
        started = time.perf_counter()
        try:
            await engine.load_adapter(record.name, record.path, pinned=record.pinned)
        except EngineUnavailableError:
            # The engine went away mid-load: keep `loading`; its ready callback will load it again.
            self.on_load("error")
            raise
        except NotImplementedError as exc:
            self.registry.set_state(record.name, "failed", reason=str(exc))
            self.on_load("error")
            raise InvalidRequestError(str(exc), param="model", code="adapters_not_supported") from None
        except APIError as exc:
            self.registry.set_state(record.name, "failed", reason=exc.message)
            self.on_load("error")
            raise UpstreamError(f"The engine refused adapter '{record.name}': {exc.message}") from None
        self._mark_live(record, engine)
        log.info("adapter %s loaded on %s in %.0f ms", record.name, engine.model_name,
                 (time.perf_counter() - started) * 1000)  # fmt: skip

    def _mark_live(self, record: AdapterRecord, engine: Engine) -> None:
        self.registry.set_state(record.name, "live", replicas=[engine.base_url])
        current = self.registry.get(record.name)
        loads = int(current.extra.get("engine_loads", 0)) if current else 0
        self.registry.update_extra(record.name, engine_loads=loads + 1)  # shown by GET /v1/adapters/{name}
        self.on_load("ok")

    async def _make_room(self, engine: Engine, keep: str) -> None:
        """Evict least-recently-used, unpinned, idle adapters until one more fits on the engine.

        When every slot holds a pinned adapter or one with requests in flight, wait (up to slot_wait_s) for one
        to become idle rather than fail: under a mixed load, slots free up within a request's time."""
        deadline = time.monotonic() + self.slot_wait_s
        while True:
            live = [r for r in self.registry.list("live") if r.base_model == engine.model_name and r.name != keep]
            excess = len(live) + 1 - engine.capabilities.max_loras
            if excess <= 0:
                return
            # Skip adapters whose lock is taken (being removed or reloaded): waiting for it while holding the slot
            # lock could deadlock, and a busy adapter is not a good victim anyway.
            candidates = sorted(
                (
                    r
                    for r in live
                    if not r.pinned and not self._in_flight.get(r.name) and not self._lock(r.name).locked()
                ),
                key=lambda r: self._last_used.get(r.name, 0.0),
            )
            for victim in candidates[:excess]:
                await self._evict(engine, victim.name)
            if len(candidates) >= excess:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EngineUnavailableError(
                    f"All {engine.capabilities.max_loras} adapter slots of '{engine.model_name}' hold pinned or busy "
                    "adapters; retry shortly.",
                    headers={"Retry-After": "2"},
                )
            self._became_idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._became_idle.wait(), remaining)

    async def _evict(self, engine: Engine, name: str) -> None:
        async with self._lock(name):
            current = self._get(name)
            if current.state != "live" or self._in_flight.get(name):
                return
            # Out of the live set before the engine call: a request arriving meanwhile must load it again, not be
            # forwarded to an engine that is dropping it.
            self.registry.set_state(name, "validated", replicas=[])
            with contextlib.suppress(APIError):
                await engine.unload_adapter(name)
            log.info("adapter %s evicted from %s (least recently used)", name, engine.model_name)

    async def _reload_after_engine_start(self, engine: Engine) -> None:
        """Engine (re)started: it has no adapters. Load every adapter meant to be live on it again."""
        for record in self.registry.list():
            if record.base_model != engine.model_name or record.state not in ("live", "loading"):
                continue
            async with self._lock(record.name), self._slot_locks[engine.model_name]:
                try:
                    await self._load(engine, record)
                except APIError as exc:
                    log.error("could not reload adapter %s after engine start: %s", record.name, exc.message)

    def _base_engine(self, base: str | None) -> Engine:
        if base is None:
            if len(self.engines) != 1:
                raise InvalidRequestError("Several base models are served: say which one with 'base'.", param="base")
            return next(iter(self.engines.values()))
        if base not in self.engines:
            raise InvalidRequestError(f"Unknown base model '{base}'.", param="base")
        return self.engines[base]

    def _get(self, name: str) -> AdapterRecord:
        record = self.registry.get(name)
        if record is None:
            raise ModelNotFoundError(f"The adapter '{name}' does not exist.", param="model")
        return record

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _drift_verdict(self, adapter_dir: Path, base_dir: Path | None) -> dict[str, object] | None:
        """On an INT4 base: the adapter's drift check (quantize/drift.py) judged by the policy; None otherwise."""
        if self.drift_policy == "off" or base_dir is None or quantization_config(base_dir) is None:
            return None
        try:
            result = read_result(adapter_dir)
        except (ValueError, OSError) as exc:
            raise InvalidRequestError(f"The adapter's {DRIFT_FILE} is unreadable: {exc}", param="path",
                                      code="invalid_adapter") from None  # fmt: skip
        if base_dir not in self._weights_sha256:
            self._weights_sha256[base_dir] = weights_sha256(base_dir)
        served = self._weights_sha256[base_dir]
        ok, message = evaluate_drift_policy(result, self.drift_threshold, self.drift_policy, served)
        checked_on = (result or {}).get("quantized", {}).get("weights_sha256")
        return {
            "ok": ok,
            "passed": evaluate_drift_policy(result, self.drift_threshold, "refuse", served)[0],  # would refuse pass
            "policy": self.drift_policy,
            "threshold": self.drift_threshold,
            "agreement": (result or {}).get("agreement"),
            "checked_on_served_weights": checked_on == served,
            "message": message,
        }

    @staticmethod
    def _fingerprint(base_dir: Path | None) -> str | None:
        if base_dir is None:
            return None
        from vlmgate.finetune.manifest import model_fingerprint

        try:
            return model_fingerprint(base_dir)
        except (OSError, ValueError):
            return None
