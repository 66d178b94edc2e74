"""Request lifecycle events: the gateway times every request itself and hands the record to observers.

Observers (metrics, SLO tracking, logging) subscribe to `RequestObservers`; the request path only fills in a
`RequestTrace`. Timestamps are `time.perf_counter()` seconds. Definitions:
- queue_s: arrival -> forwarded to the engine (validation, image checks, adapter load, admission wait).
- ttft_s: arrival -> first chunk carrying generated text (streaming) or the full response (non-streaming).
- inter-token gaps: between successive chunks carrying generated text (streaming only).
- e2e_s: arrival -> last byte sent to the client.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass
class RequestTrace:
    model: str
    adapter: str = ""
    stream: bool = False
    arrival: float = field(default_factory=time.perf_counter)
    forwarded: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    end: float | None = None
    token_events: int = 0
    inter_token_s: list[float] = field(default_factory=list)
    image_count: int = 0
    image_preprocess_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    status: int = 200
    error_type: str | None = None
    client_disconnected: bool = False
    admitted: bool = False  # holds an admission slot until the request ends
    holds_adapter: bool = False  # counted as in flight on its adapter until the request ends

    def token(self, now: float) -> None:
        if self.first_token is None:
            self.first_token = now
        elif self.last_token is not None:
            self.inter_token_s.append(now - self.last_token)
        self.last_token = now
        self.token_events += 1

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrival

    @property
    def e2e_s(self) -> float | None:
        return None if self.end is None else self.end - self.arrival

    @property
    def queue_s(self) -> float | None:
        return None if self.forwarded is None else self.forwarded - self.arrival

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first (vLLM's convention): (last - first) / (tokens - 1)."""
        tokens = self.completion_tokens or self.token_events
        if self.first_token is None or self.last_token is None or tokens < 2:
            return None
        return (self.last_token - self.first_token) / (tokens - 1)


class RequestObserver(Protocol):
    def on_request_end(self, trace: RequestTrace) -> None: ...


class RequestObservers:
    """Fan-out to every observer; an observer's failure is logged, never surfaced to the client."""

    def __init__(self) -> None:
        self._observers: list[RequestObserver] = []

    def add(self, observer: RequestObserver) -> None:
        self._observers.append(observer)

    def request_end(self, trace: RequestTrace) -> None:
        if trace.end is None:
            trace.end = time.perf_counter()
        for observer in self._observers:
            try:
                observer.on_request_end(trace)
            except Exception:
                log.exception("request observer %r failed", observer)
