"""Where observers (metrics, SLO tracking) and their routes are attached to the app.

`install(app, gateway)` is called once by create_app; it is the single place to add an observer or an
observability route.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from vlmgate.serve.app import Gateway


def install(app: FastAPI, gateway: Gateway) -> None:
    """Attach observers to gateway.observers and mount their routes (none yet)."""
