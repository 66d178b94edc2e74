"""Adapter benchmark: what hot-swapping a LoRA adapter costs, against restarting the engine, and what serving a mix of
adapters costs in throughput, against the base model alone on the same engine.

One run makes random PEFT LoRA adapters for the model (rank 8, every language-model linear layer) in a temporary
adapter store, starts a vLLM engine exactly as `vlmgate serve` does, restarts it (timed: SIGKILL -> the new engine
process answers its first token; restarting first means the run never holds two engines' memory) and starts a
gateway in front of the new engine. Then it measures:
1. hot-load latency: `POST /v1/adapters` of a fresh adapter -> first streamed token of a request to it (median and
   max over --hot-loads adapters), against the engine restart above;
2. throughput: the same streaming workload (vlmgate's load generator, ignore_eos, fixed max_tokens) sent to the base
   model and to a uniform mix of --adapters adapters, in ABBA order so drift on a shared machine hits both alike.
   With more adapters than the engine's slots (4) the mix also measures eviction and reloading.

Run as: python -m vlmgate.serve.bench_adapters
        python -m vlmgate.serve.bench_adapters --num-requests 64 --adapters 8 --hot-loads 5 --json a.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from vlmgate.serve.bench import SERVED_NAME, _mean, _measure, add_workload_args, start_engine, start_gateway

LM_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_lora_adapter(model_dir: str | Path, out_dir: Path, rank: int = 8, seed: int = 0) -> Path:
    """A PEFT LoRA adapter for model_dir with random A and B (init_lora_weights=False), saved in out_dir."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2VLForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration.from_pretrained(str(model_dir))
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LM_TARGETS, init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(str(out_dir))
    return out_dir


def first_token_s(url: str, model: str, timeout_s: float = 300) -> float:
    """Seconds from now until the first streamed content token of a short chat request to model at url."""
    body = {"model": model, "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8,
            "stream": True}  # fmt: skip
    start = time.monotonic()
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=timeout_s) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{model} at {url}: {response.status_code} {response.read().decode()[:300]}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            if choices[0].get("delta", {}).get("content"):
                return time.monotonic() - start
    raise RuntimeError(f"{model} at {url}: the stream ended without a token")


def hot_load_s(gateway_url: str, name: str, path: Path) -> dict[str, float]:
    """Register (+ load) an adapter through the admin API, then time its first token: both from the POST."""
    start = time.monotonic()
    response = httpx.post(f"{gateway_url}/v1/adapters", json={"name": name, "path": str(path)}, timeout=300)
    if response.status_code != 201:
        raise RuntimeError(f"registering {name}: {response.status_code} {response.text[:300]}")
    register_s = time.monotonic() - start
    return {"register_s": register_s, "to_first_token_s": register_s + first_token_s(gateway_url, name)}


def restart_engine_s(
    model: str, engine_proc: subprocess.Popen, log_path: Path
) -> tuple[dict[str, float], subprocess.Popen, str]:
    """SIGKILL the engine, start a new one the same way, time to readiness and to its first token."""
    start = time.monotonic()
    os.killpg(engine_proc.pid, signal.SIGKILL)
    engine_proc.wait(60)
    new_proc, url = start_engine(model, log_path)
    ready_s = time.monotonic() - start
    return {"ready_s": ready_s, "to_first_token_s": ready_s + first_token_s(url, SERVED_NAME)}, new_proc, url


def report(hot: list[dict[str, float]], restart: dict[str, float], runs: dict[str, list[dict]]) -> dict:
    """The figures of one run: hot loads vs restart, adapter mix vs base (runs: load-test summaries per side)."""
    to_token = [h["to_first_token_s"] for h in hot]
    side = {
        key: {"output_tokens_per_s": _mean(r, "throughput", "output_tokens_per_s"),
              "ttft_p50_ms": _mean(r, "latency", "ttft_ms", "p50"),
              "tpot_p50_ms": _mean(r, "latency", "tpot_ms", "p50")}
        for key, r in runs.items()
    }  # fmt: skip
    hot_median_s = statistics.median(to_token)
    return {
        "hot_load_median_s": hot_median_s,
        "hot_load_max_s": max(to_token),
        "hot_register_median_s": statistics.median(h["register_s"] for h in hot),
        "restart_ready_s": restart["ready_s"],
        "restart_s": restart["to_first_token_s"],
        "restart_over_hot_load": restart["to_first_token_s"] / hot_median_s,
        "base": side["base"],
        "adapters": side["adapters"],
        "throughput_ratio": side["adapters"]["output_tokens_per_s"] / side["base"]["output_tokens_per_s"],
        "hot_loads": hot,
    }


def format_report(fig: dict, n_adapters: int, n_hot: int) -> str:
    b, a = fig["base"], fig["adapters"]
    return "\n".join([
        f"{'':<40}{'seconds':>10}",
        f"{f'hot load, register -> 1st token (n={n_hot})':<40}{fig['hot_load_median_s']:>10.2f}  median "
        f"(max {fig['hot_load_max_s']:.2f}; register alone {fig['hot_register_median_s']:.2f})",
        f"{'engine restart, kill -> 1st token':<40}{fig['restart_s']:>10.2f}  "
        f"(ready after {fig['restart_ready_s']:.2f})",
        f"{'restart / hot load':<40}{fig['restart_over_hot_load']:>9.1f}x",
        "",
        f"{'':<40}{'tok/s':>10}{'TTFT p50 ms':>14}{'TPOT p50 ms':>14}",
        f"{'base only':<40}{b['output_tokens_per_s']:>10.1f}{b['ttft_p50_ms']:>14.1f}{b['tpot_p50_ms']:>14.1f}",
        f"{f'{n_adapters} adapters, uniform mix':<40}{a['output_tokens_per_s']:>10.1f}{a['ttft_p50_ms']:>14.1f}"
        f"{a['tpot_p50_ms']:>14.1f}",
        f"{'adapters / base':<40}{fig['throughput_ratio']:>10.3f}",
    ])  # fmt: skip


async def _throughput(args: argparse.Namespace, gateway_url: str, adapters: list[str]) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {"base": [], "adapters": []}
    for side in ("base", "adapters", "adapters", "base")[: 2 * args.rounds]:
        summary = await _measure(gateway_url, args.concurrency, args, adapters if side == "adapters" else None)
        runs[side].append(summary)
        tput = summary["throughput"]["output_tokens_per_s"]
        print(f"  {side:<9} {tput:8.1f} tok/s  TTFT p50 {summary['latency']['ttft_ms']['p50']:.0f} ms", flush=True)
    return runs


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))  # fmt: skip
    parser.add_argument("--model", help="model directory (default: the demo model)")
    parser.add_argument("--adapters", type=int, default=4, help="adapters in the mixed workload (default 4)")
    parser.add_argument("--hot-loads", type=int, default=3, help="fresh adapters hot-loaded and timed (default 3)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank of the generated adapters (default 8)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent streams (default 8)")
    add_workload_args(parser, num_requests=32, images=0, logs="/tmp/vlmgate-bench-adapters")
    args = parser.parse_args(argv)
    if args.adapters < 1 or args.hot_loads < 1:
        parser.error("--adapters and --hot-loads must be at least 1")
    from vlmgate.serve.cli import default_model_path

    model = args.model or default_model_path()
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    store = Path(tempfile.mkdtemp(prefix="vlmgate-bench-store-"))
    names = [f"hot-{i}" for i in range(args.hot_loads)] + [f"mix-{i}" for i in range(args.adapters)]
    print(f"making {len(names)} rank-{args.rank} LoRA adapters in {store} ...", flush=True)
    for seed, name in enumerate(names):
        make_lora_adapter(model, store / name, args.rank, seed)
    engines, gateway = [], None
    try:
        print(f"starting vLLM on {model} (logs: {logs}) ...", flush=True)
        engine, engine_url = start_engine(model, logs / "engine.log")
        engines.append(engine)
        first_token_s(engine_url, SERVED_NAME)
        print("engine restart: SIGKILL, start again, first token ...", flush=True)
        restart, engine, engine_url = restart_engine_s(model, engine, logs / "engine-restart.log")
        engines.append(engine)
        print(f"  restart: {restart['to_first_token_s']:.2f} s to first token", flush=True)
        gateway, gateway_url = start_gateway(model, engine_url, logs / "gateway.log",
                                             {"VLMGATE_ADAPTER_STORE": str(store)})  # fmt: skip
        first_token_s(gateway_url, SERVED_NAME)  # through the gateway once before timing
        hot = []
        for name in names[: args.hot_loads]:
            hot.append(hot_load_s(gateway_url, name, store / name))
            print(f"  hot load {name}: {hot[-1]['to_first_token_s']:.2f} s to first token", flush=True)
            httpx.delete(f"{gateway_url}/v1/adapters/{name}", timeout=300).raise_for_status()  # free its slot
        mix = names[args.hot_loads :]
        for name in mix:
            hot_load_s(gateway_url, name, store / name)
        print(f"throughput: {args.num_requests} requests x {args.max_tokens} tokens, concurrency {args.concurrency}, "
              f"{args.images} image(s), {'ABBA' if args.rounds == 2 else 'AB'}", flush=True)  # fmt: skip
        runs = asyncio.run(_throughput(args, gateway_url, mix))
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.terminate()
            gateway.wait(30)
        for proc in engines:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(60)
        shutil.rmtree(store, ignore_errors=True)
    figures = report(hot, restart, runs)
    print("\n" + format_report(figures, args.adapters, args.hot_loads), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model, "args": vars(args), **figures}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
