"""Drive a workload against a server: closed loop (N users) or open loop (an arrival schedule).

Open loop: request i is sent at its scheduled offset whether or not earlier replies came back (unless
--max-concurrency caps requests in flight), so a slow server faces a growing queue, as in production.
Closed loop: N users each send their next request as soon as their previous reply ends.
Each record keeps its intended and actual send times, so the report shows how well the schedule was kept.

    result = asyncio.run(run_load(config))
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from dataclasses import dataclass, field, replace

import aiohttp
import numpy as np

from vlmgate.loadtest.client import RequestRecord, build_payload, send_chat
from vlmgate.loadtest.config import ConfigError, LoadTestConfig
from vlmgate.loadtest.prom import Samples, parse_prometheus
from vlmgate.loadtest.workload import RequestSpec, arrival_offsets, build_requests

# Closed loop with --duration: requests are drawn from a pool of this many, cycling.
CLOSED_LOOP_POOL = 512
# /metrics is read until two scrapes this far apart agree, at most this many times.
SETTLE_S = 0.2
SETTLE_TRIES = 10


@dataclass
class RunResult:
    records: list[RequestRecord]
    duration_s: float  # first send -> last reply (or the --duration deadline's stragglers)
    metrics_before: Samples | None = None
    metrics_after: Samples | None = None
    warmup_errors: list[str] = field(default_factory=list)
    t0: float = 0.0  # time.perf_counter() at the start of the measured phase; records' times are relative to it


def headers_for(config: LoadTestConfig) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    return headers


async def served_models(session: aiohttp.ClientSession, config: LoadTestConfig) -> list[str]:
    """Model ids from GET /v1/models; [] when the server does not answer it."""
    try:
        async with session.get(f"{config.base_url}/v1/models", headers=headers_for(config)) as response:
            if response.status != 200:
                return []
            return [m["id"] for m in (await response.json()).get("data", [])]
    except (aiohttp.ClientError, ValueError, KeyError, TypeError):
        return []


async def _scrape_once(session: aiohttp.ClientSession, config: LoadTestConfig) -> Samples | None:
    try:
        async with (
            asyncio.timeout(10),
            session.get(config.metrics_url or f"{config.base_url}/metrics", headers=headers_for(config)) as r,
        ):
            return parse_prometheus(await r.text()) if r.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return None


def _counts(samples: Samples) -> dict:
    return {key: value for key, value in samples.items() if key[0].endswith(("_count", "_total"))}


async def scrape_metrics(session: aiohttp.ClientSession, config: LoadTestConfig) -> Samples | None:
    """Parsed /metrics once its counts stop moving, or None when the server exposes none.

    A server may record a request just after its last byte has reached us, so a scrape taken the moment the
    last reply ends can miss it: scrape until two scrapes SETTLE_S apart agree on every count (a few tries).
    """
    if not config.scrape_metrics:
        return None
    samples = await _scrape_once(session, config)
    for _ in range(SETTLE_TRIES):
        if samples is None:
            return None
        await asyncio.sleep(SETTLE_S)
        again = await _scrape_once(session, config)
        if again is not None and _counts(again) == _counts(samples):
            return again
        samples = again
    return samples


class _Progress:
    """A tqdm bar on stderr showing successes, errors and the running median TTFT."""

    def __init__(self, total: int | None, enabled: bool):
        self.bar = None
        self.ttfts: list[float] = []
        self.errors = 0
        self.last_postfix = 0.0
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="req", file=sys.stderr, dynamic_ncols=True, leave=False)

    def update(self, record: RequestRecord) -> None:
        if self.bar is None:
            return
        if record.ok and record.ttft_s is not None:
            self.ttfts.append(record.ttft_s)
        self.errors += not record.ok
        self.bar.update(1)
        now = time.monotonic()
        if now - self.last_postfix > 0.5:  # formatting every update would cost the generator time
            self.last_postfix = now
            median = 1000 * float(np.median(self.ttfts)) if self.ttfts else float("nan")
            self.bar.set_postfix_str(f"errors={self.errors} ttft_p50={median:.0f}ms", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


async def _one(session, config, url, headers, spec: RequestSpec, index: int, scheduled: float, t0: float):
    record = RequestRecord(index=index, model=spec.model, images=spec.image_count, scheduled_s=scheduled)
    payload = build_payload(spec.model, spec.messages, config.max_tokens, config.temperature, config.ignore_eos)
    record.sent_s = time.perf_counter() - t0
    return await send_chat(session, url, payload, headers, record, config.timeout_s)


async def _warmup(session, config, url, headers, specs: list[RequestSpec]) -> list[str]:
    errors = []
    for spec in specs:
        record = await _one(session, config, url, headers, spec, -1, 0.0, time.perf_counter())
        if not record.ok:
            errors.append(f"{record.error_kind}: {record.error}")
    return errors


async def _closed_loop(session, config, url, headers, specs, progress, t0, stop) -> list[RequestRecord]:
    records: list[RequestRecord] = []
    counter = itertools.count()
    deadline = t0 + config.duration_s if config.duration_s else None
    limit = config.num_requests if config.num_requests else None

    async def user() -> None:
        while True:
            index = next(counter)
            if (limit is not None and index >= limit) or (deadline is not None and time.perf_counter() >= deadline):
                return
            if stop is not None and stop.is_set():
                return
            spec = specs[index % len(specs)]
            record = await _one(session, config, url, headers, spec, index, time.perf_counter() - t0, t0)
            records.append(record)
            progress.update(record)

    await asyncio.gather(*(user() for _ in range(config.concurrency or 1)))
    return records


async def _open_loop(session, config, url, headers, specs, offsets, progress, t0) -> list[RequestRecord]:
    gate = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None

    async def fire(index: int, offset: float) -> RequestRecord:
        if gate is None:
            record = await _one(session, config, url, headers, specs[index], index, offset, t0)
        else:
            async with gate:
                record = await _one(session, config, url, headers, specs[index], index, offset, t0)
        progress.update(record)
        return record

    tasks = []
    for index, offset in enumerate(offsets):
        delay = t0 + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(index, offset)))
    return list(await asyncio.gather(*tasks))


async def run_load(config: LoadTestConfig, progress: bool = True, stop: asyncio.Event | None = None) -> RunResult:
    """Warm up, scrape /metrics, run the measured phase, scrape again.

    `stop` ends a closed loop early (users finish their current request), e.g. to run alongside another tool.
    """
    url = f"{config.base_url}/v1/chat/completions"
    headers = headers_for(config)
    connector = aiohttp.TCPConnector(limit=0)  # concurrency is ours to set, not the connection pool's
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        served = [] if config.models else await served_models(session, config)
        if not config.models and not served:
            raise ConfigError([f"no --model given and {config.base_url}/v1/models listed none: pass --model NAME"])
        offsets = None
        if config.rate is not None:
            rng = np.random.default_rng(config.seed + 1)
            offsets = arrival_offsets(
                rate=config.rate,
                arrival=config.arrival,
                burstiness=config.burstiness,
                rng=rng,
                count=config.num_requests,
                duration_s=config.duration_s,
            )
            count = len(offsets)
        else:
            count = config.num_requests or CLOSED_LOOP_POOL
        specs = build_requests(config, count + config.warmup_requests, served)
        # Warm-up takes the first specs so that, with a dataset, measured requests do not repeat its prompts.
        warmup, specs = [replace(s, index=-1) for s in specs[: config.warmup_requests]], specs[config.warmup_requests :]
        warmup_errors = await _warmup(session, config, url, headers, warmup)
        before = await scrape_metrics(session, config)
        bar = _Progress(count if (offsets is not None or config.num_requests) else None, progress)
        t0 = time.perf_counter()
        try:
            if offsets is None:
                records = await _closed_loop(session, config, url, headers, specs, bar, t0, stop)
            else:
                records = await _open_loop(session, config, url, headers, specs, offsets, bar, t0)
        finally:
            bar.close()
        duration = time.perf_counter() - t0
        after = await scrape_metrics(session, config) if before is not None else None
    records.sort(key=lambda r: r.index)
    return RunResult(records, duration, before, after, warmup_errors, t0)
