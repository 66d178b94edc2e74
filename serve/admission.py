"""Admission control: how many requests may be at an engine at once, and what happens past that.

Each base model has its own queue (`Admissions` holds them), so a flooded model never holds back another one.
The gateway calls `await admissions.acquire(trace)` before forwarding a request and `admissions.release(trace)`
when the request ends (stream finished, error, or client gone). Up to `admission.max_concurrent` requests per model
(or the model's own `max_concurrent`) are forwarded; the next ones wait in a first-come, first-served queue of at
most `max_queue`. A request finding the queue full,
or waiting longer than `queue_timeout_s`, gets a 429 with `Retry-After` at once: under overload the gateway
sheds load instead of letting every admitted request slow down. The wait counts in the trace's queue time
(the gateway stamps `forwarded` after acquire returns).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

from vlmgate.serve.config import AdmissionConfig
from vlmgate.serve.errors import RateLimitError
from vlmgate.serve.lifecycle import RequestTrace


class Admission:
    """A bounded, FIFO admission queue (max_concurrent None: admit everything)."""

    def __init__(self, config: AdmissionConfig | None = None) -> None:
        self.config = config or AdmissionConfig()
        self.in_flight = 0  # admitted and not yet released
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.rejected = {"queue_full": 0, "queue_timeout": 0}

    @property
    def queued(self) -> int:
        return len(self._waiters)  # granted and withdrawn waiters leave the deque at once

    async def acquire(self, trace: RequestTrace) -> None:
        limit = self.config.max_concurrent
        if limit is None or (self.in_flight < limit and not self._waiters):
            self.in_flight += 1
            return
        if len(self._waiters) >= self.config.max_queue:
            self.rejected["queue_full"] += 1
            raise self._overloaded(f"{self.in_flight} requests are running and {len(self._waiters)} are waiting")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            # The slot is handed over by release() (in_flight already counts it) when this waiter's turn comes.
            async with asyncio.timeout(self.config.queue_timeout_s):  # unlike wait_for, never swallows a cancel
                await asyncio.shield(waiter)
        except TimeoutError:
            if not self._give_up(waiter):
                return  # the slot arrived just as the wait ended: take it
            self.rejected["queue_timeout"] += 1
            raise self._overloaded(f"no slot freed up within {self.config.queue_timeout_s:g} s") from None
        except BaseException:  # cancelled: the client went away while waiting
            if not self._give_up(waiter):
                self.release()  # it was granted a slot it will never use
            raise

    def release(self) -> None:
        # Hand the slot to the oldest live waiter, or free it.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_flight -= 1

    def _give_up(self, waiter: asyncio.Future[None]) -> bool:
        """Withdraw a waiter; False if it had already been granted a slot."""
        if waiter.done():
            return False
        waiter.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        return True

    def _overloaded(self, why: str) -> RateLimitError:
        return RateLimitError(
            f"The gateway is at capacity ({why}). Retry after {self.config.retry_after_s} s.",
            code="gateway_overloaded",
            headers={"Retry-After": str(self.config.retry_after_s)},
        )


class Admissions:
    """One admission queue per base model, with totals for the metrics (in_flight, queued, rejected)."""

    def __init__(self, config: AdmissionConfig, bounds: dict[str, int | None]) -> None:
        """bounds: model name -> its max_concurrent override (None: config.max_concurrent)."""
        self.config = config
        self.queues = {
            name: Admission(config.model_copy(update={"max_concurrent": bound}) if bound else config)
            for name, bound in bounds.items()
        }

    async def acquire(self, trace: RequestTrace) -> None:
        await self.queues[trace.model].acquire(trace)

    def release(self, trace: RequestTrace) -> None:
        self.queues[trace.model].release()

    @property
    def in_flight(self) -> int:
        return sum(q.in_flight for q in self.queues.values())

    @property
    def queued(self) -> int:
        return sum(q.queued for q in self.queues.values())

    @property
    def rejected(self) -> dict[str, int]:
        return {
            reason: sum(q.rejected[reason] for q in self.queues.values()) for reason in ("queue_full", "queue_timeout")
        }
