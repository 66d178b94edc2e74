"""Adapter registry and manager against a stub engine (no vLLM): durability, single-flight loads, LRU eviction,
pinning, draining, and truthful records when the engine fails. The real engine is exercised in tests/e2e."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.adapter_factory import lora_pair, write_raw_adapter
from vlmgate.serve.adapters.manager import AdapterManager
from vlmgate.serve.adapters.registry import AdapterRecord, AdapterRegistry
from vlmgate.serve.engines.base import Engine, EngineCapabilities
from vlmgate.serve.errors import EngineUnavailableError, InvalidRequestError, UpstreamError


class StubEngine(Engine):
    """Stands in for an engine: records load/unload calls; can be told to fail."""

    kind = "stub"

    def __init__(self, slots: int = 2) -> None:
        super().__init__("base", "/nonexistent/base")
        self.slots = slots
        self.loaded: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.fail_with: Exception | None = None

    @property
    def base_url(self) -> str:
        return "http://stub"

    @property
    def capabilities(self) -> EngineCapabilities:
        return EngineCapabilities(runtime_lora=True, max_lora_rank=16, max_loras=self.slots,
                                  lora_target_modules=frozenset({"q_proj", "v_proj"}))  # fmt: skip

    async def start(self) -> None:
        self.loaded.clear()
        await self._set_ready(True)

    async def stop(self) -> None:
        await self._set_ready(False)

    async def load_adapter(self, name: str, path: str, pinned: bool = False) -> None:
        self.calls.append(("load", name))
        await asyncio.sleep(0.01)  # let concurrent callers pile up
        if self.fail_with is not None:
            raise self.fail_with
        self.loaded.add(name)

    async def unload_adapter(self, name: str) -> None:
        self.calls.append(("unload", name))
        await asyncio.sleep(0.05)  # an unload takes a while; requests keep arriving meanwhile
        self.loaded.discard(name)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    for name in ("a", "b", "c"):
        write_raw_adapter(tmp_path / name, {"target_modules": ["q_proj"]}, lora_pair("model.layers.0.self_attn.q_proj",
                                                                                     8, 32, 32))  # fmt: skip
    return tmp_path


@pytest.fixture
def engine() -> StubEngine:
    return StubEngine(slots=2)


@pytest.fixture
def manager(store: Path, engine: StubEngine) -> AdapterManager:
    return AdapterManager(AdapterRegistry(store / "registry.sqlite3"), {"base": engine}, store, drain_timeout_s=5,
                          slot_wait_s=0.2)  # fmt: skip


def loads(engine: StubEngine, name: str) -> int:
    return engine.calls.count(("load", name))


def test_registry_survives_reopening(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path / "r.sqlite3")
    registry.add(AdapterRecord("x", "1", "base", "/p", "sha256:0", 8, 16.0, ["q_proj"], pinned=True))
    registry.set_state("x", "live", replicas=["http://e"])
    registry.close()
    again = AdapterRegistry(tmp_path / "r.sqlite3").get("x")
    assert again is not None
    assert (again.state, again.replicas, again.pinned, again.target_modules) == ("live", ["http://e"], True, ["q_proj"])
    with pytest.raises(KeyError):
        AdapterRegistry(tmp_path / "r.sqlite3").add(AdapterRecord("x", "1", "b", "/p", "d", 8, 16.0, []))


async def test_concurrent_first_requests_load_once(manager: AdapterManager, engine: StubEngine) -> None:
    record = await manager.register("a", "a", load=False)
    assert record.state == "validated"
    await asyncio.gather(*(manager.acquire(record) for _ in range(20)))
    assert loads(engine, "a") == 1
    assert manager.registry.get("a").state == "live"


async def test_least_recently_used_unpinned_idle_adapter_is_evicted(
    manager: AdapterManager, engine: StubEngine
) -> None:
    for name in ("a", "b"):
        await manager.register(name, name)
        manager._last_used[name] = {"a": 1.0, "b": 2.0}[name]
    await manager.register("c", "c")
    assert engine.loaded == {"b", "c"}
    assert manager.registry.get("a").state == "validated"
    # a comes back on demand, evicting b (now the least recently used)
    manager._last_used["c"] = 3.0
    await manager.acquire(manager.registry.get("a"))
    assert engine.loaded == {"a", "c"}


async def test_pinned_and_busy_adapters_are_never_evicted(manager: AdapterManager, engine: StubEngine) -> None:
    await manager.register("a", "a", pinned=True)
    b = await manager.register("b", "b")
    await manager.acquire(b)  # b is in flight
    with pytest.raises(EngineUnavailableError):
        await manager.register("c", "c")
    assert engine.loaded == {"a", "b"}
    assert manager.registry.get("c").state == "validated"
    manager.release("b")
    await manager.ensure_loaded("c")
    assert engine.loaded == {"a", "c"}


async def test_a_load_waits_for_a_busy_slot_to_become_idle(manager: AdapterManager, engine: StubEngine) -> None:
    a, b = await manager.register("a", "a"), await manager.register("b", "b")
    await manager.acquire(a)
    await manager.acquire(b)
    await manager.register("c", "c", load=False)
    waiting = asyncio.create_task(manager.ensure_loaded("c"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    manager.release("a")  # a's request ends: its slot can be reused
    await waiting
    assert engine.loaded == {"b", "c"}


async def test_remove_waits_for_in_flight_requests(manager: AdapterManager, engine: StubEngine) -> None:
    record = await manager.register("a", "a")
    await manager.acquire(record)
    removal = asyncio.create_task(manager.remove("a"))
    await asyncio.sleep(0.05)
    assert not removal.done()
    assert manager.registry.get("a").state == "draining"
    assert manager.resolve("b") is None
    manager.release("a")
    await removal
    assert manager.registry.get("a") is None
    assert ("unload", "a") in engine.calls


async def test_engine_gone_mid_load_is_reloaded_when_it_returns(manager: AdapterManager, engine: StubEngine) -> None:
    engine.fail_with = EngineUnavailableError("engine down")
    with pytest.raises(EngineUnavailableError):
        await manager.register("a", "a")
    assert manager.registry.get("a").state == "loading"  # still meant to be loaded
    engine.fail_with = None
    await engine.start()  # the restarted engine runs the ready callbacks
    assert manager.registry.get("a").state == "live"
    assert engine.loaded == {"a"}


async def test_engine_restart_reloads_live_adapters(manager: AdapterManager, engine: StubEngine) -> None:
    await manager.register("a", "a")
    await manager.register("b", "b", load=False)
    await engine.start()  # a fresh engine knows no adapters
    assert engine.loaded == {"a"}


async def test_engine_refusal_is_recorded_as_failed(manager: AdapterManager, engine: StubEngine) -> None:
    from vlmgate.serve.errors import InvalidRequestError as EngineSaid400

    engine.fail_with = EngineSaid400("bad lora")
    with pytest.raises(UpstreamError, match="bad lora"):
        await manager.register("a", "a")
    record = manager.registry.get("a")
    assert record.state == "failed"
    assert "bad lora" in record.reason


async def test_unknown_target_is_refused_before_the_engine(manager: AdapterManager, engine: StubEngine,
                                                         store: Path) -> None:  # fmt: skip
    write_raw_adapter(store / "d", {"target_modules": ["gate_proj"]},
                      lora_pair("model.layers.0.mlp.gate_proj", 8, 32, 64))  # fmt: skip
    with pytest.raises(InvalidRequestError, match="gate_proj"):
        await manager.register("d", "d")
    assert engine.calls == []
    assert manager.registry.get("d") is None


async def test_a_request_during_eviction_loads_again(manager: AdapterManager, engine: StubEngine) -> None:
    await manager.register("a", "a")
    await manager.register("b", "b")
    manager._last_used.update(a=1.0, b=2.0)
    making_room = asyncio.create_task(manager.register("c", "c"))  # evicts a; its unload takes 50 ms
    await asyncio.sleep(0.02)
    assert ("unload", "a") in engine.calls
    assert manager.registry.get("a").state != "live"  # a request now must not be forwarded to a
    await making_room
    await manager.acquire(manager.registry.get("a"))
    assert "a" in engine.loaded
