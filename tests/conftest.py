"""Shared fixtures. One real engine per test session: the gateway fixture starts `vlmgate serve` (which launches
vLLM on the project's model) and every engine-backed test talks to it, through the gateway or directly.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO_MODEL = REPO / "finetune" / "demo" / "vlmgate-demo"
TEST_LIMITS_ENV = {"VLMGATE_LIMITS__MAX_IMAGE_BYTES": "2000000", "VLMGATE_LIMITS__MAX_IMAGE_PIXELS": "1048576"}
BURST_S = 0.03  # one burst of a held engine (engine_held): a few tokens of the tiny demo model
ENGINE_START_TIMEOUT_S = float(os.environ.get("VLMGATE_TEST_ENGINE_TIMEOUT_S", "600"))


def png_data_url(color: str = "red", size: tuple[int, int] = (112, 112), fmt: str = "PNG") -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def free_port() -> int:
    from vlmgate.serve.engines.process import free_port as _free_port

    return _free_port()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny Qwen2-VL model built offline for this session."""
    from vlmgate.finetune.tiny_vlm import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("models") / "vlmgate-tiny")


@pytest.fixture(scope="session")
def served_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model the shared engine serves: the shipped demo model (the tiny random one if absent)."""
    if (DEMO_MODEL / "config.json").is_file():
        return DEMO_MODEL
    from vlmgate.finetune.tiny_vlm import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("served") / "vlmgate-demo")


@dataclass
class RunningGateway:
    url: str  # gateway root, OpenAI API under /v1
    engine_url: str  # the vLLM behind it, OpenAI API under /v1
    model: str  # served base model id
    model_dir: Path
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def metric_total(base_url: str, name: str) -> float:
    """A Prometheus metric from the /metrics of a gateway or an engine, summed over its labels (if any)."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith((name + "{", name + " ")))


def metric_lines(gateway: RunningGateway, prefix: str) -> list[str]:
    text = httpx.get(f"{gateway.url}/metrics", timeout=30).text
    return [line for line in text.splitlines() if line.startswith(prefix)]


def request_counts(gateway: RunningGateway) -> list[str]:
    """The gateway's request counters (model, adapter, status): what became of each request."""
    return metric_lines(gateway, "vlmgate_requests_total{")


def disconnected_requests(gateway: RunningGateway) -> int:
    """Chat requests the gateway saw the client abandon (status 499, any model or adapter), from its metrics."""
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in request_counts(gateway) if 'status="499"' in line)


@contextmanager
def engine_held(gateway: RunningGateway) -> Iterator[Callable[[], None]]:
    """The gateway's vLLM engine held still (SIGSTOP on its EngineCore and Worker processes; its API server keeps
    answering) until the block ends. Calling the yielded function lets it run for one short burst (a few tokens)."""
    import psutil

    pid = httpx.get(f"{gateway.url}/ready", timeout=30).json()["engines"][gateway.model]["pid"]
    engine = [p for p in psutil.Process(pid).children(recursive=True) if p.name().startswith("VLLM::")]
    assert engine, f"no VLLM:: processes under the engine's API server (pid {pid})"

    def send(sig: signal.Signals) -> None:
        for process in engine:
            process.send_signal(sig)

    def burst() -> None:
        send(signal.SIGCONT)
        time.sleep(BURST_S)
        send(signal.SIGSTOP)

    send(signal.SIGSTOP)
    try:
        yield burst
    finally:
        send(signal.SIGCONT)


def start_gateway(model_dir: Path, log_path: Path, extra_args: list[str] | None = None,
                  env: dict[str, str] | None = None) -> RunningGateway:  # fmt: skip
    """Start `vlmgate serve` as a user would, and wait until /ready says the engine is up."""
    port = free_port()
    argv = [sys.executable, "-m", "vlmgate", "serve", "--model", str(model_dir), "--name", "vlmgate-demo",
            "--port", str(port), *(extra_args or [])]  # fmt: skip
    log_file = open(log_path, "w")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            r = httpx.get(f"{url}/ready", timeout=2)
            if r.status_code == 200:
                engine_url = r.json()["engines"]["vlmgate-demo"]["url"]
                return RunningGateway(url, engine_url, "vlmgate-demo", model_dir, proc, log_path)
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_gateway(proc)
    raise RuntimeError(f"gateway not ready in {ENGINE_START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")


def stop_gateway(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@pytest.fixture(scope="session")
def adapter_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session gateway's adapter store (adapters must live here; the registry file is inside)."""
    return tmp_path_factory.mktemp("adapter-store")


@pytest.fixture(scope="session")
def gateway(
    served_model_dir: Path, adapter_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    """The session's gateway + real vLLM engine on the project's model (served as `vlmgate-demo`)."""
    # Small image limits so that the size checks can be exercised with small test images.
    env = {**TEST_LIMITS_ENV, "VLMGATE_ADAPTER_STORE": str(adapter_store)}
    running = start_gateway(served_model_dir, tmp_path_factory.mktemp("gateway") / "gateway.log", env=env)
    yield running
    stop_gateway(running.process)


@pytest.fixture(scope="session")
def demo_engine_url(gateway: RunningGateway) -> str:
    """Base URL of the real vLLM behind the session gateway (served model `vlmgate-demo`, runtime LoRA on)."""
    return gateway.engine_url


@pytest.fixture(scope="session")
def demo_model_name() -> str:
    return "vlmgate-demo"
