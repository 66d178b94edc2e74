"""The gateway's port is bound before anything starts: a port in use fails at once with a clear message, and no
engine port picked during start-up can be the gateway's own (a CI run once saw vLLM handed the gateway's port: the
engine's readiness probe then reached the gateway itself)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from vlmgate.serve.engines.process import free_port
from vlmgate.serve.server import PortInUseError, bind


def test_a_port_in_use_is_refused_with_its_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUseError) as caught:
            bind("127.0.0.1", port)
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "--port" in str(caught.value)


def test_engine_ports_picked_while_the_gateway_starts_avoid_its_port() -> None:
    sock = bind("127.0.0.1", 0)  # the gateway's socket, bound but not yet listening (the app is starting)
    try:
        gateway_port = sock.getsockname()[1]
        assert gateway_port not in {free_port() for _ in range(200)}
    finally:
        sock.close()


def test_serve_exits_at_once_when_its_port_is_taken(tmp_path) -> None:
    config = tmp_path / "gateway.yaml"  # an attached upstream: nothing would be started anyway
    config.write_text(
        '{"models": [{"path": "m", "name": "m", "engine": {"kind": "openai", "url": "http://127.0.0.1:9"}}]}'
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "vlmgate", "serve", "--config", str(config), "--port", str(port)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "engines are starting" not in done.stderr  # refused before the app (and any engine) was set up
