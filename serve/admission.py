"""Admission control: how many requests may be at the engine at once, and what happens past that.

The gateway calls `await admission.acquire(trace)` before forwarding a request and `admission.release()` when the
request ends (stream finished, error, or client gone). This default admits everything; see issue 6 for the
bounded queue that answers 429 with Retry-After under overload.
"""

from __future__ import annotations

from vlmgate.serve.lifecycle import RequestTrace


class Admission:
    """Admit every request (no bound)."""

    in_flight: int = 0

    async def acquire(self, trace: RequestTrace) -> None:
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
