"""Run the gateway app under uvicorn, with logging set up and engines cleaned up on every exit path.

The gateway's port is bound before anything else starts: a port in use fails at once (not after a minute of engine
start-up), and an engine's free port, picked while the app starts, can never be the gateway's own.
uvicorn turns SIGINT/SIGTERM into a graceful shutdown, whose lifespan stops the engines; an `atexit` hook kills
any engine process group still alive if the gateway exits another way.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import subprocess
import sys

import uvicorn

from vlmgate.serve.app import create_app
from vlmgate.serve.config import GatewayConfig

log = logging.getLogger("vlmgate.serve")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")


def start_ui(config: GatewayConfig, port: int) -> subprocess.Popen:
    """The Gradio demo as a child process: a client of the gateway's public API, like any other. Keys reach it
    through its environment (never the command line, where `ps` would show them)."""
    from vlmgate.serve.auth import is_loopback
    from vlmgate.serve.engines.process import _die_with_parent

    host = config.host if is_loopback(config.host) else "127.0.0.1"
    argv = [sys.executable, "-m", "vlmgate", "ui", "--gateway", f"http://{host}:{config.port}", "--port", str(port),
            "--max-images", str(config.limits.max_images_per_request)]  # fmt: skip
    env = dict(os.environ)
    if config.auth.api_keys:
        env.setdefault("VLMGATE_API_KEY", config.auth.api_keys[0])
    if config.auth.admin_key:
        env.setdefault("VLMGATE_ADMIN_KEY", config.auth.admin_key)
    return subprocess.Popen(argv, env=env, preexec_fn=_die_with_parent)


class PortInUseError(SystemExit):
    pass


def bind(host: str, port: int) -> socket.socket:
    """The gateway's listening socket, bound now (as uvicorn binds it: SO_REUSEADDR, IPv6 when the host is)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortInUseError(
            f"vlmgate serve: cannot listen on {host}:{port} ({exc.strerror}); is another server running there? "
            "Pick another --port."
        ) from None
    return sock


def run(config: GatewayConfig, ui_port: int | None = None) -> int:
    setup_logging(config.log_level)
    sock = bind(config.host, config.port)
    app = create_app(config)
    gateway = app.state.gateway
    gateway_url = f"http://{config.host}:{config.port}"
    ui = start_ui(config, ui_port) if ui_port else None

    def cleanup() -> None:
        for engine in gateway.engines.values():
            kill = getattr(engine, "kill_now", None)
            if kill is not None:
                kill()
        if ui is not None and ui.poll() is None:
            ui.terminate()

    atexit.register(cleanup)
    log.info("gateway on %s; engines are starting (a minute on CPU): /ready answers 200 once they are up", gateway_url)
    if ui is not None:
        log.info("Gradio demo on http://127.0.0.1:%d (usable once the gateway reports ready)", ui_port)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=config.log_level,
            access_log=False,  # per-request logging costs CPU the engine needs; metrics cover requests
            loop="uvloop",
            http="httptools",
            timeout_graceful_shutdown=10,
        )
    )
    server.run(sockets=[sock])
    return 0
