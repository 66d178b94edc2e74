"""Benchmark the load generator itself against a STUB upstream, to show it does not distort what it measures.

Run as: python -m vlmgate.loadtest.selfbench [--requests 200] [--rates 20,100,300] [--json out.json]

The stub (loadtest/stub.py) runs in its own process and logs when it received each request and wrote its
first and last token (time.perf_counter is the system-wide monotonic clock on Linux, so both processes share
it). Reported:
- overhead: client-measured TTFT / E2E minus the stub's own, at concurrency 1, 8 and 32 (median and p99), and
  the generator's CPU time per request;
- schedule accuracy: for open-loop Poisson rates, how late requests left against their schedule (p50, p99,
  max), achieved vs offered rate, and the coefficient of variation of the gaps (1.0 for Poisson).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from vlmgate.loadtest.config import LoadTestConfig, ModelWeight
from vlmgate.loadtest.runner import run_load


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_stub(ttft_ms: float, itl_ms: float) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    argv = [sys.executable, "-m", "vlmgate.loadtest.stub", "--port", str(port), "--ttft-ms", str(ttft_ms),
            "--itl-ms", str(itl_ms)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(f"{url}/v1/models", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"stub upstream did not start: {proc.stderr.read().decode()[-2000:]}")


def _pct(values: list[float]) -> dict:
    ms = 1000 * np.asarray(values)
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "max": float(ms.max())}


async def _loop_lag(lags: list[float], period_s: float = 0.005) -> None:
    """How late the generator's own event loop wakes up: a busy client delays the chunks it timestamps."""
    while True:
        start = time.perf_counter()
        await asyncio.sleep(period_s)
        lags.append(time.perf_counter() - start - period_s)


async def measure_overhead(url: str, requests: int, concurrency: int, tokens: int) -> dict:
    before = len(httpx.get(f"{url}/stub/log").json())
    config = LoadTestConfig(url=url, models=[ModelWeight(name="stub")], concurrency=concurrency,
                            num_requests=requests, max_tokens=tokens, warmup_requests=0,
                            scrape_metrics=False)  # fmt: skip
    lags: list[float] = []
    ticker = asyncio.create_task(_loop_lag(lags))
    cpu = time.process_time()
    result = await run_load(config, progress=False)
    cpu_ms = 1000 * (time.process_time() - cpu) / requests
    ticker.cancel()
    stub = httpx.get(f"{url}/stub/log").json()[before:]
    ok = [r for r in result.records if r.ok]
    client_ttft = np.median([r.ttft_s for r in ok])
    client_e2e = np.median([r.e2e_s for r in ok])
    stub_ttft = np.median([e["first_write"] - e["received"] for e in stub])
    stub_e2e = np.median([e["last_write"] - e["received"] for e in stub])
    return {
        "concurrency": concurrency, "requests": requests, "succeeded": len(ok),
        "ttft_overhead_ms": 1000 * float(client_ttft - stub_ttft),
        "e2e_overhead_ms": 1000 * float(client_e2e - stub_e2e),
        "client_loop_lag_ms": _pct(lags),
        "client_ttft_p50_ms": 1000 * float(client_ttft), "stub_ttft_p50_ms": 1000 * float(stub_ttft),
        "generator_cpu_ms_per_request": cpu_ms,
    }  # fmt: skip


async def measure_schedule(url: str, rate: float, requests: int, tokens: int) -> dict:
    config = LoadTestConfig(url=url, models=[ModelWeight(name="stub")], rate=rate, num_requests=requests,
                            max_tokens=tokens, warmup_requests=0, scrape_metrics=False, seed=1)  # fmt: skip
    result = await run_load(config, progress=False)
    sent = np.sort([r.sent_s for r in result.records])
    gaps = np.diff(sent)
    return {
        "rate": rate, "requests": requests, "failed": sum(not r.ok for r in result.records),
        "send_lag_ms": _pct([r.sent_s - r.scheduled_s for r in result.records]),
        "achieved_send_rate": float(len(sent) - 1) / float(sent[-1] - sent[0]),
        "gap_cv": float(gaps.std() / gaps.mean()),
    }  # fmt: skip


def format_results(results: dict) -> str:
    header = f"{'concurrency':>12}{'TTFT +ms':>10}{'E2E +ms':>10}{'CPU ms/req':>12}{'loop lag p50/p99 ms':>21}"
    lines = ["generator overhead (client-measured minus stub's own timing):", header]
    for row in results["overhead"]:
        lines.append(f"{row['concurrency']:>12}{row['ttft_overhead_ms']:>10.2f}{row['e2e_overhead_ms']:>10.2f}"
                     f"{row['generator_cpu_ms_per_request']:>12.2f}"
                     f"{row['client_loop_lag_ms']['p50']:>13.2f} / {row['client_loop_lag_ms']['p99']:.2f}")  # fmt: skip
    lines += ["", "arrival schedule accuracy (open loop, Poisson):",
              f"{'rate/s':>8}{'lag p50':>9}{'lag p99':>9}{'lag max':>9}{'achieved':>10}{'gap CV':>8}"]  # fmt: skip
    for row in results["schedule"]:
        lag = row["send_lag_ms"]
        lines.append(f"{row['rate']:>8.0f}{lag['p50']:>9.2f}{lag['p99']:>9.2f}{lag['max']:>9.2f}"
                     f"{row['achieved_send_rate']:>10.1f}{row['gap_cv']:>8.2f}")  # fmt: skip
    return "\n".join(lines)


async def selfbench(url: str, args: argparse.Namespace) -> dict:
    overhead = [await measure_overhead(url, args.requests, c, args.tokens) for c in (1, 8, 32)]
    schedule = [await measure_schedule(url, rate, args.requests, args.tokens) for rate in args.rates]
    return {"stub": {"ttft_ms": args.ttft_ms, "itl_ms": args.itl_ms}, "overhead": overhead, "schedule": schedule}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlmgate.loadtest.selfbench", description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=200, help="requests per measurement (default 200)")
    p.add_argument("--tokens", type=int, default=16, help="tokens per reply (default 16)")
    p.add_argument("--rates", default="20,100,300", help="open-loop rates to check (default 20,100,300)")
    p.add_argument("--ttft-ms", type=float, default=20.0, help="stub time to first token (default 20)")
    p.add_argument("--itl-ms", type=float, default=5.0, help="stub time between tokens (default 5)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    args.rates = [float(r) for r in args.rates.split(",")]
    proc, url = start_stub(args.ttft_ms, args.itl_ms)
    try:
        results = asyncio.run(selfbench(url, args))
    finally:
        proc.terminate()
        proc.wait(10)
    print(format_results(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
