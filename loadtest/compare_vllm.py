"""Run vLLM's own benchmark and `vlmgate loadtest` side by side on one server and compare their medians.

Run as: python -m vlmgate.loadtest.compare_vllm --url http://127.0.0.1:8000 [--model NAME] [--rounds 2]

Both tools send the same shape of load in the same process, alternating (vLLM first in odd rounds, vlmgate
first in even ones) so that drift of a shared machine hits both: closed loop at --concurrency, --num-requests
text prompts of ~--input-len tokens, exactly --output-len output tokens (ignore_eos). vLLM's side is
`vllm.benchmarks.serve` (the `vllm bench serve` code) driven from Python with its random dataset and the
openai-chat backend. Exit 0 when TTFT and TPOT medians agree within --tolerance (relative to vLLM's), else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from vlmgate.loadtest.config import LoadTestConfig, ModelWeight
from vlmgate.loadtest.runner import run_load
from vlmgate.loadtest.stats import summarize
from vlmgate.loadtest.workload import synthetic_messages

METRICS = {"ttft": "TTFT p50 ms", "tpot": "TPOT p50 ms", "itl": "ITL p50 ms", "e2e": "E2E p50 ms"}


async def _served(url: str) -> tuple[str, str]:
    """(first served model id, its root = the model path vLLM loaded, used as the tokenizer)."""
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(f"{url}/v1/models") as response:
        first = (await response.json())["data"][0]
    return first["id"], first.get("root") or first["id"]


def _words_for_tokens(tokenizer_path: str, input_len: int) -> int:
    """How many synthetic words make ~input_len tokens with this tokenizer (vLLM's random prompts are exact)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    text = synthetic_messages(200, [], np.random.default_rng(0))[0]["content"]
    per_word = len(tokenizer(text, add_special_tokens=False).input_ids) / 200
    return max(1, round(input_len / per_word))


async def run_vllm_bench(args: argparse.Namespace, model: str, tokenizer: str, seed: int) -> dict:
    from vllm.benchmarks.serve import add_cli_args, main_async
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    bench_args = parser.parse_args([
        "--backend", "openai-chat", "--base-url", args.url, "--endpoint", "/v1/chat/completions",
        "--model", tokenizer, "--served-model-name", model, "--dataset-name", "random",
        "--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len),
        "--num-prompts", str(args.num_requests), "--max-concurrency", str(args.concurrency),
        "--ignore-eos", "--seed", str(seed), "--percentile-metrics", "ttft,tpot,itl,e2el", "--disable-tqdm",
    ])  # fmt: skip
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # vLLM prints its own tables; kept for --verbose
        result = await main_async(bench_args)
    if args.verbose:
        print(log.getvalue(), file=sys.stderr)
    return {
        "ttft": result["median_ttft_ms"], "tpot": result["median_tpot_ms"], "itl": result["median_itl_ms"],
        "e2e": result["median_e2el_ms"], "completed": result["completed"],
        "output_tokens": result["total_output_tokens"], "request_throughput": result["request_throughput"],
    }  # fmt: skip


async def run_ours(args: argparse.Namespace, model: str, words: int, seed: int) -> dict:
    config = LoadTestConfig(
        url=args.url, models=[ModelWeight(name=model)], concurrency=args.concurrency,
        num_requests=args.num_requests, prompt_words=words, max_tokens=args.output_len, ignore_eos=True,
        warmup_requests=1, seed=seed, scrape_metrics=False,
    )  # fmt: skip
    result = await run_load(config, progress=False)
    summary = summarize(result.records, result.duration_s, config.slo)
    lat = summary["latency"]
    return {
        **{key: (lat[f"{key}_ms"] or {}).get("p50") for key in METRICS},
        "completed": summary["requests"]["succeeded"], "output_tokens": summary["throughput"]["output_tokens"],
        "request_throughput": summary["throughput"]["requests_per_s"],
    }  # fmt: skip


async def compare(args: argparse.Namespace) -> dict:
    served, root = await _served(args.url)
    model, tokenizer = args.model or served, args.tokenizer or root
    words = _words_for_tokens(tokenizer, args.input_len)
    rounds: list[dict] = []
    for index in range(args.rounds):
        seed = args.seed + index
        order = ("vllm", "vlmgate") if index % 2 == 0 else ("vlmgate", "vllm")
        results = {}
        for tool in order:
            if tool == "vllm":
                results[tool] = await run_vllm_bench(args, model, tokenizer, seed)
            else:
                results[tool] = await run_ours(args, model, words, seed)
            print(f"round {index + 1} {tool}: " + ", ".join(f"{k} {results[tool][k]:.2f}" for k in METRICS),
                  file=sys.stderr)  # fmt: skip
        rounds.append(results)
    medians = {
        tool: {key: statistics.median(r[tool][key] for r in rounds) for key in METRICS} for tool in ("vllm", "vlmgate")
    }
    diffs = {key: medians["vlmgate"][key] / medians["vllm"][key] - 1 for key in METRICS}
    agree = all(abs(diffs[key]) <= args.tolerance for key in ("ttft", "tpot"))
    return {"model": model, "tokenizer": tokenizer, "prompt_words": words, "rounds": rounds, "medians": medians,
            "relative_difference": diffs, "tolerance": args.tolerance, "agree": agree}  # fmt: skip


def format_comparison(outcome: dict) -> str:
    lines = [f"{'':14}{'vllm bench':>12}{'vlmgate':>12}{'diff':>9}"]
    for key, label in METRICS.items():
        vllm, ours = outcome["medians"]["vllm"][key], outcome["medians"]["vlmgate"][key]
        lines.append(f"{label:14}{vllm:12.2f}{ours:12.2f}{100 * outcome['relative_difference'][key]:+8.1f}%")
    verdict = "AGREE" if outcome["agree"] else "DISAGREE"
    lines.append(f"TTFT and TPOT medians within {100 * outcome['tolerance']:.0f}%: {verdict} "
                 f"(median over {len(outcome['rounds'])} alternating rounds)")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlmgate.loadtest.compare_vllm", description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True, help="base URL of a vLLM server (or the gateway in front of one)")
    p.add_argument("--model", help="served model name (default: the first in /v1/models)")
    p.add_argument("--tokenizer", help="tokenizer path for vLLM's random prompts (default: /v1/models root)")
    p.add_argument("--concurrency", type=int, default=4, help="closed-loop users (default 4)")
    p.add_argument("--num-requests", type=int, default=48, help="requests per tool per round (default 48)")
    p.add_argument("--input-len", type=int, default=128, help="prompt tokens (default 128)")
    p.add_argument("--output-len", type=int, default=32, help="output tokens, fixed by ignore_eos (default 32)")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds per tool (default 4)")
    p.add_argument("--tolerance", type=float, default=0.10, help="allowed relative difference (default 0.10)")
    p.add_argument("--seed", type=int, default=0, help="seed of both tools' prompts")
    p.add_argument("--json", type=Path, help="also write the comparison here")
    p.add_argument("--verbose", action="store_true", help="show vLLM benchmark's own output")
    args = p.parse_args(argv)
    args.url = args.url.rstrip("/").removesuffix("/v1")
    outcome = asyncio.run(compare(args))
    print(format_comparison(outcome))
    if args.json:
        args.json.write_text(json.dumps(outcome, indent=1) + "\n")
    return 0 if outcome["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
