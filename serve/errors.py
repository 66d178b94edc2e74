"""OpenAI-style errors: the one vocabulary in which the gateway reports every failure to a client.

Anything raised as an `APIError` reaches the client as `{"error": {"message", "type", "param", "code"}}` with its
HTTP status; the app's error boundary (serve/app.py) turns every other exception into a logged, generic 500.
"""

from __future__ import annotations

from typing import Any

import orjson


class APIError(Exception):
    """An error the client should see, with the HTTP status and OpenAI error fields it maps to."""

    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def json_bytes(self) -> bytes:
        return orjson.dumps(self.body())


class InvalidRequestError(APIError):
    status = 400
    type = "invalid_request_error"


class PayloadTooLargeError(APIError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class ModelNotFoundError(APIError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class AuthenticationError(APIError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(APIError):
    status = 403
    type = "permission_error"
    code = "insufficient_scope"


class ConflictError(APIError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class RateLimitError(APIError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class AdaptersUnsupportedError(APIError, NotImplementedError):
    """An adapter was asked of a base whose engine cannot load adapters at runtime (e.g. a generic upstream).

    Also a NotImplementedError: code that treats "this engine has no runtime adapters" that way keeps working."""

    status = 400
    type = "invalid_request_error"
    code = "adapters_not_supported"


class EngineUnavailableError(APIError):
    """The engine is starting, restarting or unreachable: the client may retry."""

    status = 503
    type = "service_unavailable_error"
    code = "engine_unavailable"

    @classmethod
    def unreachable(cls, exc: BaseException) -> EngineUnavailableError:
        """The engine's connection failed (refused, reset, closed): it may be restarting."""
        return cls(
            f"The engine is not reachable ({exc.__class__.__name__}); it may be restarting. Retry shortly.",
            headers={"Retry-After": "2"},
        )


class UpstreamError(APIError):
    """The engine answered with an error the gateway could not attribute to the request."""

    status = 502
    type = "upstream_error"
    code = "engine_error"


def from_engine_response(status: int, payload: bytes) -> APIError:
    """Map an engine's error reply (vLLM, SGLang or any OpenAI-compatible server) to a gateway error.

    Engines disagree on shape (`{"error": {...}}`, `{"object": "error", "message": ...}`, plain text); the
    client always gets the OpenAI shape. 4xx keep their status (the request was at fault); 5xx become 502.
    """
    message, param = _parse_error_payload(payload)
    message = message or f"engine returned HTTP {status}"
    if status == 404:
        return ModelNotFoundError(message, param=param or "model")
    if 400 <= status < 500 and status != 429:
        return InvalidRequestError(message, param=param, status=status)
    if status == 429 or status == 503:
        return EngineUnavailableError(f"engine busy: {message}", headers={"Retry-After": "1"})
    return UpstreamError(f"engine error (HTTP {status}): {message}")


def _parse_error_payload(payload: bytes) -> tuple[str, str | None]:
    """(message, param) from an engine's error body; engines' own error types (e.g. vLLM's "BadRequestError")
    are dropped in favour of OpenAI's vocabulary."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload.decode("utf-8", "replace").strip()[:2000], None
    if not isinstance(data, dict):
        return str(data)[:2000], None
    inner = data.get("error") if isinstance(data.get("error"), dict) else data
    message = inner.get("message") or inner.get("detail") or inner.get("error") or ""
    param = inner.get("param")
    return str(message)[:2000], param if isinstance(param, str) else None
