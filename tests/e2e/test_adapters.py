"""Hot-swapped adapters on the real engine: register, route, match transformers+peft, evict, remove, restart."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.adapter_factory import make_peft_adapter, peft_decisive_prefixes
from tests.conftest import RunningGateway, start_gateway, stop_gateway

pytestmark = pytest.mark.engine

PROMPTS = ["What colour is the circle?", "Describe the picture.", "How many squares are there?"]


def chat(gateway: RunningGateway, model: str, prompt: str, timeout: float = 120) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 8, "temperature": 0}
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=timeout)


def answer(gateway: RunningGateway, model: str, prompt: str) -> str:
    reply = chat(gateway, model, prompt)
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["message"]["content"]


def register(gateway: RunningGateway, name: str, path: str, **extra: object) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/adapters", json={"name": name, "path": path, **extra}, timeout=120)


@pytest.fixture(scope="module")
def adapters(gateway: RunningGateway, adapter_store: Path) -> dict[str, Path]:
    """Six PEFT adapters with different random weights, inside the gateway's adapter store."""
    return {f"ad{i}": make_peft_adapter(gateway.model_dir, adapter_store / f"ad{i}", seed=i) for i in range(6)}


def test_register_route_match_peft_then_remove(gateway: RunningGateway, adapters: dict[str, Path]) -> None:
    reply = register(gateway, "ad0", "ad0", version="2")
    assert reply.status_code == 201, reply.text
    assert reply.json()["state"] == "live"
    models = {m["id"]: m for m in httpx.get(f"{gateway.url}/v1/models").json()["data"]}
    assert models["ad0"]["parent"] == "vlmgate-demo"

    served = [answer(gateway, "ad0", p) for p in PROMPTS]
    assert served == [answer(gateway, "ad0@2", p) for p in PROMPTS]
    base = [answer(gateway, "vlmgate-demo", p) for p in PROMPTS]
    assert served != base, "the adapter did not change the output"
    # Equal to transformers + peft wherever its choice is clear (random weights leave near-ties that bf16
    # rounding decides); at least one answer has a clear part, so this is not vacuous.
    decided = peft_decisive_prefixes(gateway.model_dir, adapters["ad0"], PROMPTS)
    assert any(decided), decided
    for got, prefix in zip(served, decided, strict=True):
        assert got.startswith(prefix), (got, prefix)

    assert chat(gateway, "ad0@1", PROMPTS[0]).status_code == 404  # wrong version
    removed = httpx.delete(f"{gateway.url}/v1/adapters/ad0", timeout=60)
    assert removed.status_code == 200
    gone = chat(gateway, "ad0", PROMPTS[0])
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "model_not_found"


def test_concurrent_first_requests_cause_one_load(gateway: RunningGateway, adapters: dict[str, Path]) -> None:
    assert register(gateway, "ad1", "ad1", load=False).json()["state"] == "validated"
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(lambda _: chat(gateway, "ad1", PROMPTS[0]), range(20)))
    assert [r.status_code for r in replies] == [200] * 20
    assert len({r.json()["choices"][0]["message"]["content"] for r in replies}) == 1
    record = httpx.get(f"{gateway.url}/v1/adapters/ad1").json()
    assert record["state"] == "live"
    assert record["extra"]["engine_loads"] == 1


def test_more_adapters_than_slots_all_serve_correctly(gateway: RunningGateway, adapters: dict[str, Path]) -> None:
    names = ["ad2", "ad3", "ad4", "ad5", "ad1"]  # 5 adapters on an engine with 4 slots
    for name in names[:-1]:
        assert register(gateway, name, name, load=False).status_code == 201
    expected = {name: answer(gateway, name, PROMPTS[1]) for name in names}  # one at a time: evictions in turn
    assert len(set(expected.values())) > 1
    work = [names[i % len(names)] for i in range(30)]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        got = list(pool.map(lambda n: answer(gateway, n, PROMPTS[1]), work))
    assert got == [expected[n] for n in work]
    live = [a for a in httpx.get(f"{gateway.url}/v1/adapters").json()["data"] if a["state"] == "live"]
    assert len(live) <= 4


def test_gateway_restart_keeps_the_registry(gateway: RunningGateway, adapter_store: Path, tmp_path: Path) -> None:
    before = {a["name"]: a for a in httpx.get(f"{gateway.url}/v1/adapters").json()["data"]}
    assert before
    # A second gateway on the same adapter store, attached to the same engine: it must know every adapter.
    second = start_gateway(gateway.model_dir, tmp_path / "second.log",
                           extra_args=["--engine-url", gateway.engine_url],
                           env={"VLMGATE_ADAPTER_STORE": str(adapter_store)})  # fmt: skip
    try:
        after = {a["name"]: a for a in httpx.get(f"{second.url}/v1/adapters").json()["data"]}
        assert set(after) == set(before)
        assert {n: a["digest"] for n, a in after.items()} == {n: a["digest"] for n, a in before.items()}
        name = next(n for n, a in before.items() if a["state"] == "live")
        assert answer(second, name, PROMPTS[1]) == answer(gateway, name, PROMPTS[1])
    finally:
        stop_gateway(second.process)


def test_engine_killed_restarts_with_live_adapters_back(gateway: RunningGateway) -> None:
    live = {a["name"] for a in httpx.get(f"{gateway.url}/v1/adapters").json()["data"] if a["state"] == "live"}
    assert live
    expected = {name: answer(gateway, name, PROMPTS[2]) for name in sorted(live)}
    pid = httpx.get(f"{gateway.url}/ready").json()["engines"]["vlmgate-demo"]["pid"]
    group = os.getpgid(pid)
    assert len(processes_in_group(group)) >= 2  # the API server and its engine core / workers
    os.kill(pid, signal.SIGKILL)
    # While the engine is down, requests fail fast with a retryable error rather than hang.
    statuses = set()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        reply = chat(gateway, sorted(live)[0], PROMPTS[2], timeout=60)
        statuses.add(reply.status_code)
        if reply.status_code == 200:
            break
        assert reply.status_code == 503, reply.text
        assert "retry-after" in reply.headers
        time.sleep(2)
    assert 503 in statuses
    assert httpx.get(f"{gateway.url}/ready").json()["engines"]["vlmgate-demo"]["restarts"] >= 1
    assert httpx.get(f"{gateway.url}/ready").json()["engines"]["vlmgate-demo"]["url"] == gateway.engine_url
    assert {name: answer(gateway, name, PROMPTS[2]) for name in sorted(live)} == expected
    states = {a["name"]: a["state"] for a in httpx.get(f"{gateway.url}/v1/adapters").json()["data"]}
    assert all(states[n] == "live" for n in live)
    assert processes_in_group(group) == [], "the killed engine's children were left running"


def processes_in_group(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    pids.append(int(entry.name))
            except ProcessLookupError:
                continue
    return pids
