"""API keys: inference keys for the OpenAI routes, a separate admin key for adapter management.

- Keys come from config (`auth.api_keys`, `auth.admin_key`) or `VLMGATE_API_KEYS` / `VLMGATE_ADMIN_KEY`.
- The admin key also works on inference routes; an inference key on an admin route is a 403.
- With no key of a kind configured, its routes are open; the gateway allows that only on a loopback address
  (and logs a warning), unless started with `--insecure`.
Keys are compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging

from starlette.requests import Request

from vlmgate.serve.config import AuthConfig
from vlmgate.serve.errors import AuthenticationError, PermissionDeniedError

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_startup(auth: AuthConfig, host: str) -> str | None:
    """None if the gateway may start with these keys on this address, else the reason it must not."""
    if auth.api_keys and auth.admin_key:
        return None
    kinds = (("inference keys", auth.api_keys), ("admin key", auth.admin_key))
    missing = " and ".join(f"no {name}" for name, keys in kinds if not keys)
    if is_loopback(host):
        log.warning("%s configured: the gateway is open to anyone on this machine (bound to %s)", missing, host)
        return None
    if auth.insecure:
        log.warning("%s configured and bound to %s: OPEN TO THE NETWORK (--insecure)", missing, host)
        return None
    return (
        f"refusing to listen on {host} with {missing}: set VLMGATE_API_KEYS and VLMGATE_ADMIN_KEY (or auth: in the "
        "config), bind to 127.0.0.1, or pass --insecure to run open on purpose"
    )


class Authorizer:
    def __init__(self, auth: AuthConfig) -> None:
        self.api_keys = [k.encode() for k in auth.api_keys]
        self.admin_key = auth.admin_key.encode() if auth.admin_key else None

    def inference(self, request: Request) -> None:
        if not self.api_keys:
            return
        key = self._bearer(request)
        if not (self._matches(key, self.api_keys) or (self.admin_key and hmac.compare_digest(key, self.admin_key))):
            raise AuthenticationError("Incorrect API key provided.")

    def admin(self, request: Request) -> None:
        if self.admin_key is None:
            return
        key = self._bearer(request)
        if hmac.compare_digest(key, self.admin_key):
            return
        if self._matches(key, self.api_keys):
            raise PermissionDeniedError(
                "This key may call the inference API only; adapter management needs the admin key."
            )
        raise AuthenticationError("Incorrect admin key provided.")

    @staticmethod
    def _matches(key: bytes, keys: list[bytes]) -> bool:
        return any(hmac.compare_digest(key, k) for k in keys)  # no early exit on the first match: constant time

    @staticmethod
    def _bearer(request: Request) -> bytes:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError(
                "Missing API key: send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
            )
        return token.strip().encode()
