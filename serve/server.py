"""Run the gateway app under uvicorn, with logging set up and engines cleaned up on every exit path.

uvicorn turns SIGINT/SIGTERM into a graceful shutdown, whose lifespan stops the engines; an `atexit` hook kills
any engine process group still alive if the gateway exits another way.
"""

from __future__ import annotations

import atexit
import logging

import uvicorn

from vlmgate.serve.app import create_app
from vlmgate.serve.config import GatewayConfig

log = logging.getLogger("vlmgate.serve")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")


def run(config: GatewayConfig) -> int:
    setup_logging(config.log_level)
    app = create_app(config)
    gateway = app.state.gateway

    def kill_engines() -> None:
        for engine in gateway.engines.values():
            kill = getattr(engine, "kill_now", None)
            if kill is not None:
                kill()

    atexit.register(kill_engines)
    log.info("starting gateway on http://%s:%d (engines start first; this takes a minute on CPU)",
             config.host, config.port)  # fmt: skip
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        access_log=False,  # per-request logging costs CPU the engine needs; metrics cover requests
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=10,
    )
    return 0
