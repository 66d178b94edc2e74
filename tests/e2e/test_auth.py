"""API keys: inference keys, a separate admin key, 401/403, and no open gateway off loopback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningGateway, start_gateway, stop_gateway

pytestmark = pytest.mark.engine

KEYS = {"VLMGATE_API_KEYS": "user-key-1,user-key-2", "VLMGATE_ADMIN_KEY": "admin-key"}


@pytest.fixture(scope="module")
def secured(gateway: RunningGateway, adapter_store: Path, tmp_path_factory: pytest.TempPathFactory):
    """A second gateway with keys, attached to the session engine (no second engine)."""
    running = start_gateway(gateway.model_dir, tmp_path_factory.mktemp("secured") / "gateway.log",
                            extra_args=["--engine-url", gateway.engine_url],
                            env={**KEYS, "VLMGATE_ADAPTER_STORE": str(adapter_store)})  # fmt: skip
    yield running
    stop_gateway(running.process)


def _chat(url: str, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": "vlmgate-demo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)


@pytest.mark.parametrize(
    ("key", "status"), [(None, 401), ("wrong", 401), ("user-key-1", 200), ("user-key-2", 200), ("admin-key", 200)]
)
def test_inference_needs_a_valid_key(secured: RunningGateway, key: str | None, status: int) -> None:
    reply = _chat(secured.url, key)
    assert reply.status_code == status, reply.text
    if status == 401:
        assert reply.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(("key", "status"), [(None, 401), ("wrong", 401), ("user-key-1", 403), ("admin-key", 200)])
def test_admin_routes_need_the_admin_key(secured: RunningGateway, key: str | None, status: int) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    reply = httpx.get(f"{secured.url}/v1/adapters", headers=headers, timeout=30)
    assert reply.status_code == status, reply.text
    if status == 403:
        assert reply.json()["error"]["type"] == "permission_error"


def test_health_and_ready_stay_open(secured: RunningGateway) -> None:
    assert httpx.get(f"{secured.url}/health").status_code == 200
    assert httpx.get(f"{secured.url}/ready").status_code == 200


def test_refuses_to_listen_off_loopback_without_keys(gateway: RunningGateway) -> None:
    argv = [sys.executable, "-m", "vlmgate", "serve", "--host", "0.0.0.0", "--engine-url", gateway.engine_url,
            "--model", str(gateway.model_dir)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0" in done.stderr
