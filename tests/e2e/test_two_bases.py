"""One gateway, two base models at once: the demo model on a vLLM the gateway launches, and the tiny model on a
second, independent vLLM process attached by URL as a generic OpenAI-compatible upstream (`engine.kind: openai`).

This starts its own gateway (from a `--config` YAML, as a user would) and one extra vLLM, so it is marked
`engine`. Run as: python -m pytest tests/e2e/test_two_bases.py -q
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from openai import BadRequestError, OpenAI

from tests.conftest import ENGINE_START_TIMEOUT_S, free_port, png_data_url, stop_gateway
from vlmgate.serve.config import EngineConfig, LimitsConfig
from vlmgate.serve.engines.vllm import VLLMEngine

pytestmark = pytest.mark.engine

DEMO, TINY = "vlmgate-demo", "tiny"
TINY_UPSTREAM_ID = "tiny-upstream"  # what the second vLLM calls its model; the gateway's clients say "tiny"


@dataclass
class TwoBases:
    url: str
    upstream_url: str
    log_path: Path


def wait_ready(url: str, procs: list[subprocess.Popen], logs: list[Path]) -> None:
    deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        for proc, log in zip(procs, logs, strict=True):
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} not ready in {ENGINE_START_TIMEOUT_S} s:\n{logs[-1].read_text()[-4000:]}")


@pytest.fixture(scope="module")
def two_bases(
    served_model_dir: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TwoBases]:
    tmp = tmp_path_factory.mktemp("two-bases")
    # The second vLLM is started exactly as vlmgate would start it, but by the test: to the gateway it is just a URL.
    upstream = VLLMEngine(TINY_UPSTREAM_ID, str(tiny_model_dir), EngineConfig(max_loras=1), LimitsConfig())
    upstream_port, gateway_port = free_port(), free_port()
    upstream_log, gateway_log = tmp / "upstream-vllm.log", tmp / "gateway.log"
    config = {
        "port": gateway_port,
        "models": [
            {"path": str(served_model_dir), "name": DEMO, "engine": {"kind": "vllm"}},
            {"path": TINY_UPSTREAM_ID, "name": TINY,
             "engine": {"kind": "openai", "url": f"http://127.0.0.1:{upstream_port}"}},
        ],
    }  # fmt: skip
    config_path = tmp / "two-bases.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {**upstream.environment(), "VLMGATE_ADAPTER_STORE": str(tmp / "adapters")}
    with open(upstream_log, "w") as up_out, open(gateway_log, "w") as gw_out:
        procs = [
            subprocess.Popen(upstream.command(upstream_port), stdout=up_out, stderr=subprocess.STDOUT, env=env),
            subprocess.Popen([sys.executable, "-m", "vlmgate", "serve", "--config", str(config_path)],
                             stdout=gw_out, stderr=subprocess.STDOUT, env=env),
        ]  # fmt: skip
        try:
            wait_ready(f"http://127.0.0.1:{gateway_port}/ready", procs, [upstream_log, gateway_log])
            yield TwoBases(f"http://127.0.0.1:{gateway_port}", f"http://127.0.0.1:{upstream_port}", gateway_log)
        finally:
            for proc in reversed(procs):
                stop_gateway(proc)


@pytest.fixture(scope="module")
def client(two_bases: TwoBases) -> OpenAI:
    return OpenAI(base_url=f"{two_bases.url}/v1", api_key="unused", max_retries=0, timeout=120)


def image_question() -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_url("blue")}},
                                         {"type": "text", "text": "What colour is the shape?"}]}]  # fmt: skip


def test_models_and_readiness_list_both_bases_on_their_engines(client: OpenAI, two_bases: TwoBases) -> None:
    assert {m.id for m in client.models.list().data} >= {DEMO, TINY}
    engines = httpx.get(f"{two_bases.url}/ready").json()["engines"]
    assert (engines[DEMO]["kind"], engines[DEMO]["attached"]) == ("vllm", False)
    assert (engines[TINY]["kind"], engines[TINY]["attached"]) == ("openai", True)
    assert engines[TINY]["url"] == two_bases.upstream_url


def upstream_requests_served(upstream_url: str) -> float:
    """Requests the second vLLM finished, from its own Prometheus counter."""
    lines = httpx.get(f"{upstream_url}/metrics").text.splitlines()
    prefix, label = "vllm:request_success_total{", f'model_name="{TINY_UPSTREAM_ID}"'
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix) and label in line)


def test_each_base_answers_an_image_question_from_its_own_engine(client: OpenAI, two_bases: TwoBases) -> None:
    served_before = upstream_requests_served(two_bases.upstream_url)
    answered_by = {}
    for model in (DEMO, TINY):
        reply = client.chat.completions.create(model=model, messages=image_question(), max_tokens=4, temperature=0)
        assert reply.usage.prompt_tokens > 10  # the image's tokens were counted by the engine
        answered_by[model] = reply.model
    # Each reply names the model its engine served: the upstream's own id for the attached one.
    assert answered_by == {DEMO: DEMO, TINY: TINY_UPSTREAM_ID}
    # Exactly one of the two requests reached the second vLLM.
    assert upstream_requests_served(two_bases.upstream_url) == served_before + 1


def test_streaming_through_the_generic_upstream_relays_tokens_and_usage(client: OpenAI) -> None:
    stream = client.chat.completions.create(model=TINY, messages=image_question(), max_tokens=5, temperature=0,
                                            stream=True, stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    assert chunks[-1].usage is not None
    assert 1 <= chunks[-1].usage.completion_tokens <= 5
    assert {c.model for c in chunks} == {TINY_UPSTREAM_ID}  # every event came from the second vLLM
    assert chunks[-2].choices[0].finish_reason in ("length", "stop")


def test_the_gateway_validates_requests_for_the_upstream_too(client: OpenAI) -> None:
    images = [{"type": "image_url", "image_url": {"url": png_data_url()}}] * 3  # the default limit is 2
    with pytest.raises(BadRequestError, match="image"):
        client.chat.completions.create(model=TINY, messages=[{"role": "user", "content": images}], max_tokens=2)
