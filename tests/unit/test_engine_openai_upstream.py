"""OpenAIUpstreamEngine against a stub OpenAI-compatible server: attach and readiness, the model id sent
upstream, a clear 400 for every adapter operation, and the gateway's own validation in front of it.

Run as: python -m pytest tests/unit/test_engine_openai_upstream.py -q
(the same engine against a real second vLLM: tests/e2e/test_two_bases.py)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.conftest import png_data_url
from tests.unit.engine_stub import StubEngineServer
from vlmgate.serve.app import create_app
from vlmgate.serve.config import ConfigError, EngineConfig, LimitsConfig, ModelConfig, load_config
from vlmgate.serve.engines import create_engine
from vlmgate.serve.engines.base import EngineStartError
from vlmgate.serve.engines.openai_upstream import OpenAIUpstreamEngine
from vlmgate.serve.errors import AdaptersUnsupportedError

UPSTREAM_ID = "llava:7b"  # what the upstream calls the model (an Ollama-style id)
CHAT_REPLY = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": UPSTREAM_ID,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "red"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21},
}  # fmt: skip


@pytest.fixture
def stub() -> Iterator[StubEngineServer]:
    """A stub upstream that serves UPSTREAM_ID and has no /health (like Ollama)."""
    server = StubEngineServer().start()
    server.reply("GET", "/v1/models", 200, {"object": "list", "data": [{"id": UPSTREAM_ID, "object": "model"}]})
    server.reply("POST", "/v1/chat/completions", 200, CHAT_REPLY)
    yield server
    server.stop()


def upstream(url: str, path: str = UPSTREAM_ID) -> OpenAIUpstreamEngine:
    config = EngineConfig(kind="openai", url=url, startup_timeout_s=3)
    return OpenAIUpstreamEngine("remote", path, config, LimitsConfig())


def test_kind_openai_needs_a_url() -> None:
    with pytest.raises(ConfigError, match="needs engine.url"):
        load_config(overrides={"models": [{"path": "m", "engine": {"kind": "openai"}}]}, environ={})


def test_create_engine_builds_an_upstream_for_kind_openai() -> None:
    model = ModelConfig(path=UPSTREAM_ID, name="remote", engine=EngineConfig(kind="openai", url="http://h:1"))
    engine = create_engine(model, LimitsConfig())
    assert isinstance(engine, OpenAIUpstreamEngine)
    assert engine.capabilities.runtime_lora is False


def test_base_requests_carry_the_upstream_model_id() -> None:
    assert upstream("http://h:1").request_model_name(None) == UPSTREAM_ID


async def test_adapter_operations_say_this_upstream_has_no_runtime_adapters() -> None:
    engine = upstream("http://h:1")
    for operation in (engine.load_adapter("fr", "/adapters/fr"), engine.unload_adapter("fr")):
        with pytest.raises(AdaptersUnsupportedError, match="has no runtime adapters") as caught:
            await operation
        assert caught.value.status == 400
        assert caught.value.body()["error"]["code"] == "adapters_not_supported"
        assert isinstance(caught.value, NotImplementedError)  # what the adapter manager maps to a 400
    with pytest.raises(AdaptersUnsupportedError, match="Cannot use adapter 'fr'"):
        engine.request_model_name("fr")


async def test_attach_is_ready_on_the_model_list_alone(stub: StubEngineServer) -> None:
    engine = upstream(stub.url)
    await engine.start()
    try:
        assert engine.ready
        assert {r.path for r in stub.sent()} == {"/v1/models"}
    finally:
        await engine.stop()


async def test_attach_fails_early_when_the_upstream_does_not_serve_the_model(stub: StubEngineServer) -> None:
    engine = upstream(stub.url, path="qwen2-vl")
    try:
        with pytest.raises(EngineStartError, match=r"does not serve 'qwen2-vl' \(it serves: llava:7b\)"):
            await engine.start()
    finally:
        await engine.stop()
    assert not engine.ready


def test_gateway_relays_to_the_upstream_under_its_id_after_validating(stub: StubEngineServer) -> None:
    config = load_config(
        overrides={"models": [{"path": UPSTREAM_ID, "name": "remote", "engine": {"kind": "openai", "url": stub.url}}]},
        environ={},
    )
    with TestClient(create_app(config)) as client:
        ok = client.post(
            "/v1/chat/completions", json={"model": "remote", "messages": [{"role": "user", "content": "hi"}]}
        )
        images = [{"type": "image_url", "image_url": {"url": png_data_url()}}] * 3  # the default limit is 2
        too_many = client.post(
            "/v1/chat/completions", json={"model": "remote", "messages": [{"role": "user", "content": images}]}
        )
        ready = client.get("/ready").json()
    assert ok.status_code == 200
    assert ok.json()["choices"][0]["message"]["content"] == "red"
    assert too_many.status_code == 400
    chats = stub.sent("POST", "/v1/chat/completions")
    assert len(chats) == 1  # the bad request never reached the upstream
    assert chats[0].json["model"] == UPSTREAM_ID
    assert ready["engines"]["remote"]["kind"] == "openai"


def test_api_key_from_the_named_environment_variable_goes_on_every_call(stub: StubEngineServer, monkeypatch) -> None:
    monkeypatch.setenv("REMOTE_KEY", "sk-remote-123")
    engine = {"kind": "openai", "url": stub.url, "api_key_env": "REMOTE_KEY"}
    config = load_config(overrides={"models": [{"path": UPSTREAM_ID, "name": "remote", "engine": engine}]}, environ={})
    with TestClient(create_app(config)) as client:
        reply = client.post(
            "/v1/chat/completions", json={"model": "remote", "messages": [{"role": "user", "content": "hi"}]}
        )
    assert reply.status_code == 200
    assert {r.path for r in stub.sent()} == {"/v1/models", "/v1/chat/completions"}
    assert {r.authorization for r in stub.sent()} == {"Bearer sk-remote-123"}  # readiness probe and request alike


async def test_api_key_variable_that_is_not_set_fails_the_start_and_names_it(stub: StubEngineServer) -> None:
    config = EngineConfig(kind="openai", url=stub.url, startup_timeout_s=3, api_key_env="VLMGATE_TEST_UNSET_KEY")
    engine = OpenAIUpstreamEngine("remote", UPSTREAM_ID, config, LimitsConfig())
    with pytest.raises(EngineStartError, match=r"\$VLMGATE_TEST_UNSET_KEY, which is not set"):
        await engine.start()
    await engine.stop()
    assert stub.sent() == []
