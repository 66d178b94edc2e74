"""The bounded admission queue: FIFO slots, 429 with Retry-After past the queue or its timeout, no leaked slots."""

from __future__ import annotations

import asyncio

import pytest

from vlmgate.serve.admission import Admission, Admissions
from vlmgate.serve.config import AdmissionConfig, ConfigError, load_config
from vlmgate.serve.errors import RateLimitError
from vlmgate.serve.lifecycle import RequestTrace


def admission(max_concurrent: int | None = 1, max_queue: int = 1, timeout_s: float = 5.0) -> Admission:
    return Admission(
        AdmissionConfig(max_concurrent=max_concurrent, max_queue=max_queue, queue_timeout_s=timeout_s, retry_after_s=3)
    )


async def test_past_the_queue_a_request_gets_429_with_retry_after() -> None:
    gate = admission(max_concurrent=1, max_queue=1)
    await gate.acquire(RequestTrace(model="m"))
    waiting = asyncio.create_task(gate.acquire(RequestTrace(model="m")))
    await asyncio.sleep(0)
    assert (gate.in_flight, gate.queued) == (1, 1)
    with pytest.raises(RateLimitError) as err:
        await gate.acquire(RequestTrace(model="m"))
    assert err.value.status == 429
    assert err.value.headers == {"Retry-After": "3"}
    assert gate.rejected == {"queue_full": 1, "queue_timeout": 0}
    gate.release()  # the slot passes to the waiter, it does not become free
    await waiting
    assert (gate.in_flight, gate.queued) == (1, 0)
    gate.release()
    assert gate.in_flight == 0


async def test_waiters_are_admitted_first_come_first_served() -> None:
    gate = admission(max_concurrent=1, max_queue=5)
    await gate.acquire(RequestTrace(model="m"))
    order: list[int] = []

    async def wait(i: int) -> None:
        await gate.acquire(RequestTrace(model="m"))
        order.append(i)

    tasks = [asyncio.create_task(wait(i)) for i in range(4)]
    await asyncio.sleep(0)
    for _ in range(4):
        gate.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]


async def test_a_wait_longer_than_the_timeout_is_a_429_and_frees_its_place() -> None:
    gate = admission(max_concurrent=1, max_queue=1, timeout_s=0.05)
    await gate.acquire(RequestTrace(model="m"))
    with pytest.raises(RateLimitError, match="no slot freed up within 0.05 s"):
        await gate.acquire(RequestTrace(model="m"))
    assert (gate.queued, gate.rejected["queue_timeout"]) == (0, 1)
    gate.release()
    assert gate.in_flight == 0


async def test_a_client_leaving_while_queued_or_just_granted_leaks_no_slot() -> None:
    gate = admission(max_concurrent=1, max_queue=2)
    await gate.acquire(RequestTrace(model="m"))
    leaving = asyncio.create_task(gate.acquire(RequestTrace(model="m")))
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert gate.queued == 0
    granted = asyncio.create_task(gate.acquire(RequestTrace(model="m")))
    await asyncio.sleep(0)
    gate.release()  # hands the slot over ...
    granted.cancel()  # ... but the client is gone before it runs
    with pytest.raises(asyncio.CancelledError):
        await granted
    assert (gate.in_flight, gate.queued) == (0, 0)


async def test_no_bound_admits_everything() -> None:
    gate = admission(max_concurrent=None, max_queue=0)
    for _ in range(100):
        await gate.acquire(RequestTrace(model="m"))
    assert gate.in_flight == 100


def test_admission_config_from_yaml_env_and_errors() -> None:
    config = load_config(None, environ={"VLMGATE_ADMISSION__MAX_CONCURRENT": "8"})
    assert (config.admission.max_concurrent, config.admission.max_queue) == (8, 1024)
    with pytest.raises(ConfigError, match="admission.max_queue"):
        load_config(None, {"admission.max_queue": -1}, environ={})
    with pytest.raises(ConfigError, match="did you mean 'max_concurrent'"):
        load_config(None, {"admission.max_concurent": 2}, environ={})


async def test_each_model_has_its_own_queue_and_bound() -> None:
    config = AdmissionConfig(max_concurrent=2, max_queue=0, retry_after_s=3)
    gates = Admissions(config, {"busy": None, "other": None, "small": 1})
    for _ in range(2):
        await gates.acquire(RequestTrace(model="busy"))
    with pytest.raises(RateLimitError):
        await gates.acquire(RequestTrace(model="busy"))  # "busy" is full ...
    await gates.acquire(RequestTrace(model="other"))  # ... and holds nobody else back
    await gates.acquire(RequestTrace(model="small"))
    with pytest.raises(RateLimitError):
        await gates.acquire(RequestTrace(model="small"))  # its own bound: 1
    assert (gates.in_flight, gates.queued, gates.rejected) == (4, 0, {"queue_full": 2, "queue_timeout": 0})
    gates.release(RequestTrace(model="busy"))
    await gates.acquire(RequestTrace(model="busy"))
    assert gates.queues["busy"].in_flight == 2


def test_per_model_bound_in_the_config() -> None:
    config = load_config(None, {"models": [{"path": "/m", "name": "m", "max_concurrent": 4}]}, environ={})
    assert config.models[0].max_concurrent == 4
    with pytest.raises(ConfigError, match="max_concurrent"):
        load_config(None, {"models": [{"path": "/m", "max_concurrent": 0}]}, environ={})
