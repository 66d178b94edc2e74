"""`vlmgate bench`: what the gateway costs, measured side by side against calling the engine directly.

One run starts (or attaches to) a real vLLM engine, starts a gateway process in front of it, and drives the same
streaming workload (vlmgate's own load generator) alternately at the engine and at the gateway, in ABBA order so
that drift on a shared machine hits both sides alike. Per concurrency level it prints TTFT p50/p99 overhead (ms),
the output-token throughput ratio (gateway / direct) and the gateway's CPU time per request (its process's
user+system CPU, read from /proc, divided by the requests it served).

Unless --no-floor, a bare TCP relay (loadtest/relay.py: bytes copied as they arrive, nothing else) is measured
in the same run as the floor: the wake-ups and system calls per token that any streaming proxy pays on this
machine; the gateway's cost beyond the relay's is its own.

With --stub the upstream is a STUB (loadtest/stub.py: fixed-latency placeholder tokens, no model) instead of vLLM:
the engine's own noise is gone and only the gateway's cost is left, which is how to profile the gateway itself.

Run as: vlmgate bench                                   (demo model, concurrency 1 and 32)
        vlmgate bench --model DIR --concurrency 1 8 32 --json bench.json
        vlmgate bench --engine-url http://127.0.0.1:8001 --model DIR   (an engine you started)
        vlmgate bench --stub                            (the gateway alone, in front of a STUB upstream)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from vlmgate.loadtest.config import SLO, LoadTestConfig
from vlmgate.loadtest.runner import run_load
from vlmgate.loadtest.stats import summarize
from vlmgate.serve.engines.process import free_port

SERVED_NAME = "bench-model"


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick  # utime, stime


def _wait_ready(url: str, proc: subprocess.Popen | None, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was ready")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f} s")


def start_engine(model: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    """A vLLM process launched exactly as `vlmgate serve` launches it."""
    from vlmgate.serve.config import EngineConfig, LimitsConfig
    from vlmgate.serve.engines.process import _die_with_parent
    from vlmgate.serve.engines.vllm import VLLMEngine

    engine = VLLMEngine(SERVED_NAME, model, EngineConfig(), LimitsConfig())
    port = free_port()
    proc = subprocess.Popen(engine.command(port), env=engine.environment(), stdout=log_path.open("w"),
                            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    _wait_ready(f"{url}/v1/models", proc, 900)
    return proc, url


def start_gateway(
    model: str, engine_url: str, log_path: Path, env: dict[str, str] | None = None, kind: str = "vllm"
) -> tuple[subprocess.Popen, str]:
    """A gateway process in front of engine_url (an engine of `kind`); env adds variables (e.g.
    VLMGATE_ADAPTER_STORE)."""
    port = free_port()
    config = log_path.with_suffix(".yaml")
    engine = {"kind": kind, "url": engine_url}
    config.write_text(json.dumps({"models": [{"path": model, "name": SERVED_NAME, "engine": engine}]}))  # YAML ⊃ JSON
    argv = [sys.executable, "-m", "vlmgate", "serve", "--config", str(config), "--port", str(port),
            "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, **(env or {})}
    proc = subprocess.Popen(argv, stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(f"{url}/ready", proc, 120)
    return proc, url


def start_relay(upstream_url: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    """The floor reference: a bare TCP relay (loadtest/relay.py) in front of upstream_url."""
    port = free_port()
    argv = [sys.executable, "-m", "vlmgate.loadtest.relay", "--port", str(port), "--upstream", upstream_url]
    proc = subprocess.Popen(argv, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(f"{url}/v1/models", proc, 60)
    return proc, url


async def _measure(url: str, concurrency: int, args: argparse.Namespace, models: list[str] | None = None) -> dict:
    """One load-test run: args.num_requests streaming requests spread uniformly over models (default: the base)."""
    config = LoadTestConfig(
        url=url, models=[{"name": m} for m in models or [SERVED_NAME]], concurrency=concurrency,
        num_requests=requests_per_run(args, concurrency), warmup_requests=2, max_tokens=args.max_tokens,
        ignore_eos=True, images_per_request=args.images, prompt_words=args.prompt_words, scrape_metrics=False,
        seed=args.seed,
    )  # fmt: skip
    result = await run_load(config, progress=False)
    summary = summarize(result.records, result.duration_s, SLO())
    if summary["requests"]["failed"]:
        raise RuntimeError(f"{url}: {summary['requests']['failed']} requests failed: {summary['requests']}")
    return summary


async def bench(args: argparse.Namespace, targets: dict[str, tuple[str, int | None]]) -> list[dict]:
    """targets: name -> (url, pid whose CPU is counted); "direct" and "gateway" always, "relay" optionally."""
    rows = []
    sides = [name for name in ("direct", "gateway", "relay") if name in targets]
    order = sides + sides[::-1] if args.rounds == 2 else sides  # ABBA (or ABCCBA): drift hits every side alike
    for concurrency in args.concurrency:
        runs: dict[str, list[dict]] = {name: [] for name in sides}
        cpu_s = {name: [0.0, 0.0] for name in sides}  # user, system
        served = dict.fromkeys(sides, 0)
        for name in order:
            url, pid = targets[name]
            before = _cpu_seconds(pid) if pid else (0.0, 0.0)
            summary = await _measure(url, concurrency, args)
            if pid:
                after = _cpu_seconds(pid)
                cpu_s[name][0] += after[0] - before[0]
                cpu_s[name][1] += after[1] - before[1]
                served[name] += summary["requests"]["total"] + 2  # + warm-up requests
            runs[name].append(summary)
        rows.append(_row(concurrency, runs, cpu_s, served))
        print(format_rows(rows[-1:], header=len(rows) == 1), flush=True)
    return rows


def _mean(runs: list[dict], *path: str) -> float:
    """Mean over runs of one figure; NaN if a run lacks it (e.g. TPOT with one output token)."""
    values = []
    for run in runs:
        value = run
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        values.append(float("nan") if value is None else value)
    return sum(values) / len(values)


def _row(concurrency: int, runs: dict[str, list[dict]], cpu_s: dict[str, list[float]], served: dict[str, int]) -> dict:
    d, g = runs["direct"], runs["gateway"]
    ttft = {f"{side}_{q}": _mean(r, "latency", "ttft_ms", q) for side, r in (("direct", d), ("gateway", g))
            for q in ("p50", "p99")}  # fmt: skip
    tput_d, tput_g = _mean(d, "throughput", "output_tokens_per_s"), _mean(g, "throughput", "output_tokens_per_s")
    row = {
        "concurrency": concurrency,
        **{f"ttft_{k}_ms": v for k, v in ttft.items()},
        "ttft_p50_overhead_ms": ttft["gateway_p50"] - ttft["direct_p50"],
        "ttft_p99_overhead_ms": ttft["gateway_p99"] - ttft["direct_p99"],
        "tpot_p50_direct_ms": _mean(d, "latency", "tpot_ms", "p50"),
        "tpot_p50_gateway_ms": _mean(g, "latency", "tpot_ms", "p50"),
        "output_tokens_per_s_direct": tput_d,
        "output_tokens_per_s_gateway": tput_g,
        "throughput_ratio": tput_g / tput_d,
        "gateway_cpu_ms_per_request": 1000 * sum(cpu_s["gateway"]) / max(served["gateway"], 1),
        "gateway_system_cpu_ms_per_request": 1000 * cpu_s["gateway"][1] / max(served["gateway"], 1),  # kernel
    }
    if "relay" in runs:  # the floor: a bare TCP relay under the same load
        r = runs["relay"]
        row["ttft_p50_overhead_relay_ms"] = _mean(r, "latency", "ttft_ms", "p50") - ttft["direct_p50"]
        row["throughput_ratio_relay"] = _mean(r, "throughput", "output_tokens_per_s") / tput_d
        row["relay_cpu_ms_per_request"] = 1000 * sum(cpu_s["relay"]) / max(served["relay"], 1)
        row["relay_system_cpu_ms_per_request"] = 1000 * cpu_s["relay"][1] / max(served["relay"], 1)
    return row


def format_rows(rows: list[dict], header: bool = True) -> str:
    cols = [("conc", "concurrency", "{:>4}"), ("TTFT p50 direct", "ttft_direct_p50_ms", "{:>15.1f}"),
            ("gateway", "ttft_gateway_p50_ms", "{:>8.1f}"), ("+ms", "ttft_p50_overhead_ms", "{:>6.1f}"),
            ("TTFT p99 direct", "ttft_direct_p99_ms", "{:>15.1f}"), ("gateway", "ttft_gateway_p99_ms", "{:>8.1f}"),
            ("+ms", "ttft_p99_overhead_ms", "{:>6.1f}"), ("tok/s direct", "output_tokens_per_s_direct", "{:>12.0f}"),
            ("gateway", "output_tokens_per_s_gateway", "{:>8.0f}"), ("ratio", "throughput_ratio", "{:>6.3f}"),
            ("gw CPU ms/req", "gateway_cpu_ms_per_request", "{:>13.2f}"),
            ("of it kernel", "gateway_system_cpu_ms_per_request", "{:>12.2f}"),
            ("relay +ms", "ttft_p50_overhead_relay_ms", "{:>9.1f}"), ("ratio", "throughput_ratio_relay", "{:>6.3f}"),
            ("relay CPU ms/req", "relay_cpu_ms_per_request", "{:>16.2f}"),
            ("of it kernel", "relay_system_cpu_ms_per_request", "{:>12.2f}")]  # fmt: skip
    cols = [c for c in cols if all(c[1] in row for row in rows)]
    lines = ["  ".join(f"{title:>{len(fmt.format(0))}}" for title, _, fmt in cols)] if header else []
    lines += ["  ".join(fmt.format(row[key]) for _, key, fmt in cols) for row in rows]
    return "\n".join(lines)


def requests_per_run(args: argparse.Namespace, concurrency: int) -> int:
    """--num-requests, or by default six waves of `concurrency` requests (at least 32): with a single wave the
    figures measure how one batch of simultaneous arrivals happens to be scheduled, not a steady state."""
    return args.num_requests or max(32, 6 * concurrency)


def add_workload_args(parser: argparse.ArgumentParser, num_requests: int | None, images: int, logs: str) -> None:
    """The workload and output flags every side-by-side benchmark shares (this one and bench_adapters.py)."""
    default = num_requests if num_requests else "max(32, 6 x concurrency)"
    parser.add_argument("--num-requests", type=int, default=num_requests,
                        help=f"measured requests per run (default {default})")  # fmt: skip
    parser.add_argument("--rounds", type=int, choices=[1, 2], default=2, help="1: AB, 2: ABBA (default)")
    parser.add_argument("--max-tokens", type=int, default=64, help="output tokens per request (default 64)")
    parser.add_argument("--prompt-words", type=int, default=32, help="synthetic prompt length (default 32)")
    parser.add_argument("--images", type=int, default=images, help=f"images per request (default {images})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--logs", metavar="DIR", default=logs, help="engine and gateway logs")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0] + ".",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))  # fmt: skip
    parser.add_argument("--model", help="model directory (default: the demo model)")
    parser.add_argument("--engine-url", help="use this running vLLM instead of starting one (it must serve --model)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32], help="levels to measure (default 1 32)")
    parser.add_argument(
        "--stub",
        action="store_true",
        help="measure in front of a STUB upstream (no model, fixed latencies): the gateway's own cost",
    )
    parser.add_argument("--stub-ttft-ms", type=float, default=20.0, help="STUB time to first token (default 20)")
    parser.add_argument("--stub-itl-ms", type=float, default=5.0, help="STUB time between tokens (default 5)")
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="skip the floor reference: a bare TCP relay (loadtest/relay.py) under the same load, "
                             "i.e. what any proxy pays on this machine")  # fmt: skip
    add_workload_args(parser, num_requests=None, images=1, logs="/tmp/vlmgate-bench")
    args = parser.parse_args(argv)
    from vlmgate.serve.cli import default_model_path

    model = args.model or default_model_path()
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    engine_proc: subprocess.Popen | None = None
    procs: list[subprocess.Popen] = []  # gateway and relay, stopped however the run ends
    kind = "vllm"
    try:
        if args.stub:
            from vlmgate.loadtest.selfbench import start_stub

            print(f"upstream: a STUB (fixed {args.stub_ttft_ms:g} ms to the first token, then one every "
                  f"{args.stub_itl_ms:g} ms; no model): the figures are the gateway's own cost",
                  flush=True)  # fmt: skip
            engine_proc, engine_url = start_stub(args.stub_ttft_ms, args.stub_itl_ms)
            kind, model = "openai", "stub"  # the id the stub serves
        elif args.engine_url:
            engine_url = args.engine_url.rstrip("/")
        else:
            print(f"starting vLLM on {model} (logs: {logs}/engine.log) ...", flush=True)
            engine_proc, engine_url = start_engine(model, logs / "engine.log")
        gateway_proc, gateway_url = start_gateway(model, engine_url, logs / "gateway.log", kind=kind)
        procs.append(gateway_proc)
        targets: dict[str, tuple[str, int | None]] = {
            "direct": (engine_url, None),
            "gateway": (gateway_url, gateway_proc.pid),
        }
        if args.floor:
            relay_proc, relay_url = start_relay(engine_url, logs / "relay.log")
            procs.append(relay_proc)
            targets["relay"] = (relay_url, relay_proc.pid)
        order = "ABBA" if args.rounds == 2 else "AB"
        per_run = ", ".join(f"{requests_per_run(args, c)} at concurrency {c}" for c in args.concurrency)
        print(f"engine {engine_url}, gateway {gateway_url}; streaming requests per run: {per_run}; {args.max_tokens} "
              f"tokens each, {args.images} image(s) each, {order} order", flush=True)  # fmt: skip
        rows = asyncio.run(bench(args, targets))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        if engine_proc is not None:
            if args.stub:
                engine_proc.terminate()
            else:
                os.killpg(engine_proc.pid, 15)  # the engine's whole process group
            engine_proc.wait(60)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model, "rows": rows}, indent=2))
    return 0
