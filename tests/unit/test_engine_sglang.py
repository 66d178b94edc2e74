"""SGLangEngine against a stub SGLang server: the exact requests the gateway sends and how it reads the replies,
as SGLang 0.5.23 defines them (SGLang itself has no CPU build, so it cannot run here).

Run as: python -m pytest tests/unit/test_engine_sglang.py -q
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterator

import pytest

from tests.unit.engine_stub import StubEngineServer
from vlmgate.serve.config import ConfigError, EngineConfig, LimitsConfig, ModelConfig, load_config
from vlmgate.serve.engines import create_engine
from vlmgate.serve.engines.sglang import SGLangEngine
from vlmgate.serve.errors import ConflictError, EngineUnavailableError, InvalidRequestError, UpstreamError

LOADED_OK = {"success": True, "error_message": None, "loaded_adapters": {"fr": "/adapters/fr"}}


@pytest.fixture
def stub() -> Iterator[StubEngineServer]:
    """A stub SGLang server, ready (health and model list answer 200)."""
    server = StubEngineServer().start()
    server.reply("GET", "/health", 200, {})
    server.reply("GET", "/v1/models", 200, {"object": "list", "data": [{"id": "demo", "object": "model"}]})
    yield server
    server.stop()


def engine_for(url: str | None = None, **engine_fields: object) -> SGLangEngine:
    engine_fields.setdefault("startup_timeout_s", 5)
    config = EngineConfig(kind="sglang", url=url, **engine_fields)
    return SGLangEngine("demo", "/models/demo", config, LimitsConfig())


async def started(stub: StubEngineServer) -> SGLangEngine:
    engine = engine_for(stub.url)
    await engine.start()
    return engine


def test_adapter_requests_name_base_and_adapter_because_a_bare_adapter_name_serves_the_base() -> None:
    engine = engine_for()
    assert engine.request_model_name("fr") == "demo:fr"
    assert engine.request_model_name(None) == "demo"


def test_create_engine_builds_sglang_for_kind_sglang() -> None:
    model = ModelConfig(path="/models/demo", name="demo", engine=EngineConfig(kind="sglang"))
    assert isinstance(create_engine(model, LimitsConfig()), SGLangEngine)


def test_launch_command_enables_lora_metrics_and_reserves_a_pool_slot_for_the_base() -> None:
    engine = engine_for(max_lora_rank=16, max_loras=3, max_loaded_loras=8, max_model_len=4096,
                        lora_eviction_policy="fifo", gpu_memory_utilization=0.8, extra_args=["--tp", "2"])  # fmt: skip
    argv = engine.command(30001)
    assert argv[:3] == [sys.executable, "-m", "sglang.launch_server"]
    flags = " ".join(argv[3:])
    assert "--model-path /models/demo --served-model-name demo --host 127.0.0.1 --port 30001" in flags
    assert "--enable-lora --max-lora-rank 16" in flags
    assert "--lora-target-modules q_proj k_proj v_proj o_proj gate_proj up_proj down_proj" in flags
    assert "--max-loras-per-batch 4" in flags  # 3 adapters + the base model's slot
    assert "--max-loaded-loras 8" in flags
    assert "--lora-eviction-policy fifo --mem-fraction-static 0.8 --enable-metrics" in flags
    assert "--context-length 4096" in flags
    assert argv[-2:] == ["--tp", "2"]


def test_launch_uses_the_configured_python_so_sglang_can_live_in_its_own_environment() -> None:
    assert engine_for(python="/opt/sglang/bin/python").command(30001)[:3] == [
        "/opt/sglang/bin/python", "-m", "sglang.launch_server"]  # fmt: skip


def test_config_rejects_fewer_loaded_adapters_than_slots() -> None:
    data = {"models": [{"path": "m", "engine": {"kind": "sglang", "max_loras": 4, "max_loaded_loras": 2}}]}
    with pytest.raises(ConfigError, match="max_loaded_loras"):
        load_config(overrides=data, environ={})


def test_metric_names_map_the_gateway_quantities_to_sglang_names() -> None:
    names = SGLangEngine.metric_names
    assert names["time_to_first_token_seconds"] == "sglang:time_to_first_token_seconds"
    assert names["inter_token_latency_seconds"] == "sglang:inter_token_latency_seconds"
    assert names["e2e_request_latency_seconds"] == "sglang:e2e_request_latency_seconds"
    assert names["requests_waiting"] == "sglang:num_queue_reqs"
    assert names["requests_running"] == "sglang:num_running_reqs"


async def test_attach_waits_for_health_and_model_list(stub: StubEngineServer) -> None:
    engine = await started(stub)
    try:
        assert engine.ready
        assert [r.path for r in stub.sent("GET")][:2] == ["/health", "/v1/models"]
        assert engine.describe()["attached"] is True
    finally:
        await engine.stop()


async def test_load_posts_name_path_and_pinned_without_v1_prefix(stub: StubEngineServer) -> None:
    stub.reply("POST", "/load_lora_adapter", 200, LOADED_OK)
    engine = await started(stub)
    try:
        await engine.load_adapter("fr", "/adapters/fr")
        await engine.load_adapter("fr", "/adapters/fr", pinned=True)
    finally:
        await engine.stop()
    bodies = [r.json for r in stub.sent("POST")]
    assert bodies == [{"lora_name": "fr", "lora_path": "/adapters/fr", "pinned": False},
                      {"lora_name": "fr", "lora_path": "/adapters/fr", "pinned": True}]  # fmt: skip
    assert {r.path for r in stub.sent("POST")} == {"/load_lora_adapter"}


async def test_unload_posts_only_the_name(stub: StubEngineServer) -> None:
    stub.reply("POST", "/unload_lora_adapter", 200, {"success": True, "error_message": None, "loaded_adapters": {}})
    engine = await started(stub)
    try:
        await engine.unload_adapter("fr")
    finally:
        await engine.stop()
    assert [(r.path, r.json) for r in stub.sent("POST")] == [("/unload_lora_adapter", {"lora_name": "fr"})]


async def test_success_false_with_http_200_is_a_failure(stub: StubEngineServer) -> None:
    reply = {"success": False, "error_message": "Failed to load LoRA adapter fr because it is already loaded",
             "loaded_adapters": {"fr": "/adapters/old-fr"}}  # fmt: skip
    stub.reply("POST", "/load_lora_adapter", 200, reply)
    engine = await started(stub)
    try:
        with pytest.raises(ConflictError, match="already loaded") as caught:
            await engine.load_adapter("fr", "/adapters/fr")  # a different path than the loaded one
    finally:
        await engine.stop()
    assert caught.value.status == 409


async def test_loading_what_is_already_loaded_from_the_same_path_succeeds(stub: StubEngineServer) -> None:
    # e.g. the gateway restarted while SGLang kept its adapters: loaded_adapters maps each name to its path.
    reply = {"success": False, "error_message": "Failed to load LoRA adapter fr because it is already loaded",
             "loaded_adapters": {"fr": "/adapters/fr"}}  # fmt: skip
    stub.reply("POST", "/load_lora_adapter", 400, reply)
    engine = await started(stub)
    try:
        await engine.load_adapter("fr", "/adapters/fr")
    finally:
        await engine.stop()
    assert len(stub.sent("POST", "/load_lora_adapter")) == 1


async def test_http_400_reply_carries_sglang_error_message(stub: StubEngineServer) -> None:
    reply = {"success": False, "error_message": "LoRA adapter fr with rank 128 is incompatible", "loaded_adapters": {}}
    stub.reply("POST", "/load_lora_adapter", 400, reply)
    engine = await started(stub)
    try:
        with pytest.raises(InvalidRequestError, match="rank 128 is incompatible") as caught:
            await engine.load_adapter("fr", "/adapters/fr")
    finally:
        await engine.stop()
    assert caught.value.status == 400
    assert caught.value.param == "lora_name"


async def test_unloading_an_unknown_adapter_is_a_conflict(stub: StubEngineServer) -> None:
    reply = {"success": False, "error_message": "LoRA with name fr does not exist. Loaded LoRAs: {}"}
    stub.reply("POST", "/unload_lora_adapter", 400, reply)
    engine = await started(stub)
    try:
        with pytest.raises(ConflictError, match="does not exist"):
            await engine.unload_adapter("fr")
    finally:
        await engine.stop()


@pytest.mark.parametrize(
    ("reply", "problem"),
    [({"success": True, "loaded_adapters": {"other": "/x"}}, "does not list adapter 'fr'"),
     ({"status": "ok"}, "without a success field")],
    ids=["success-but-not-listed", "no-success-field"],
)  # fmt: skip
async def test_replies_that_do_not_confirm_the_load_are_upstream_errors(
    stub: StubEngineServer, reply: dict, problem: str
) -> None:
    stub.reply("POST", "/load_lora_adapter", 200, reply)
    engine = await started(stub)
    try:
        with pytest.raises(UpstreamError, match=problem):
            await engine.load_adapter("fr", "/adapters/fr")
    finally:
        await engine.stop()


async def test_unreachable_engine_makes_adapter_calls_retryable(stub: StubEngineServer) -> None:
    engine = await started(stub)
    stub.stop()
    stub.start = lambda: stub  # type: ignore[method-assign] - the fixture's stop() must not fail now
    stub.stop = lambda: None  # type: ignore[method-assign]
    try:
        with pytest.raises(EngineUnavailableError):
            await engine.load_adapter("fr", "/adapters/fr")
    finally:
        await engine.stop()


async def test_attach_times_out_with_a_hint_when_health_never_answers(stub: StubEngineServer) -> None:
    stub.reply("GET", "/health", 503, {})
    engine = engine_for(stub.url, startup_timeout_s=1)
    try:
        with pytest.raises(Exception, match="raise engine.startup_timeout_s"):
            await engine.start()
    finally:
        await engine.stop()
    assert not engine.ready


async def until(condition: Callable[[], bool]) -> None:
    """Wait for a condition the engine's background health check brings about (bounded, so a bug fails)."""
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.025)
    raise AssertionError("condition never became true")


async def test_attached_engine_that_stops_answering_is_not_ready_and_reloads_adapters_when_back(
    stub: StubEngineServer,
) -> None:
    engine = engine_for(stub.url, health_check_interval_s=0.05)
    ready_runs: list[bool] = []

    async def reload_adapters(_: object) -> None:  # what the adapter registry does on every (re)ready
        ready_runs.append(True)

    engine.on_ready(reload_adapters)
    await engine.start()
    try:
        stub.reply("GET", "/health", 503, {})
        await until(lambda: not engine.ready)
        assert "stopped answering" in str(engine.describe()["last_error"])
        stub.reply("GET", "/health", 200, {})
        await until(lambda: engine.ready)
    finally:
        await engine.stop()
    assert len(ready_runs) == 2  # at start, and again when the engine came back
    assert engine.status.restarts == 1
