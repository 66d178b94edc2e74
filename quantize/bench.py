"""INT4 vs bf16 on the same engine build, in one run: latency, throughput and served accuracy.

Each model is served in turn by the gateway's own vLLM launcher (serve/engines/vllm.py: same flags, LoRA on, as
`vlmgate serve` uses), then measured the same way:
  latency     sequential streaming requests: time to first token and end-to-end, median and p90
  throughput  `--concurrency` parallel requests, each generating exactly `--max-tokens` tokens (ignore_eos), output
              tokens per second of wall time
  accuracy    greedy exact match on `--data` (held-out JSONL) through the engine, when given
On CPU the W4A16 kernel dequantizes on the fly, so INT4 can be slower than bf16: this reports what it measures.

Run as: python -m vlmgate.quantize.bench --bf16 DIR --int4 DIR [--int4 DIR2] [--data HELDOUT.jsonl] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from vlmgate.serve.config import EngineConfig, LimitsConfig
from vlmgate.serve.engines.base import EngineStartError
from vlmgate.serve.engines.vllm import VLLMEngine

SERVED_NAME = "bench"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _stream(client: httpx.AsyncClient, url: str, messages: list[dict], max_tokens: int) -> dict[str, float]:
    """One streaming request; times measured here, on the client side of the engine's HTTP API."""
    body = {"model": SERVED_NAME, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}  # fmt: skip
    started = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    return {"ttft_ms": 1000 * ((first or end) - started), "e2e_ms": 1000 * (end - started), "tokens": tokens}


async def _answer(client: httpx.AsyncClient, url: str, messages: list[dict]) -> str:
    body = {"model": SERVED_NAME, "messages": messages, "max_tokens": 16, "temperature": 0}
    response = await client.post(f"{url}/v1/chat/completions", json=body)
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"] or ""


async def measure(url: str, prompts: list[list[dict]], args: argparse.Namespace, data) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=600) as client:
        for _ in range(2):  # warm-up: first requests pay one-off costs (graph/kernel set-up, caches)
            await _stream(client, url, prompts[0], args.max_tokens)
        sequential = [await _stream(client, url, prompts[i % len(prompts)], args.max_tokens)
                      for i in range(args.latency_requests)]  # fmt: skip
        started = time.perf_counter()
        batch = [_stream(client, url, prompts[i % len(prompts)], args.max_tokens) for i in range(args.concurrency)]
        parallel = await asyncio.gather(*batch)
        wall = time.perf_counter() - started
        result = {
            "ttft_ms_p50": statistics.median(r["ttft_ms"] for r in sequential),
            "ttft_ms_p90": _percentile([r["ttft_ms"] for r in sequential], 0.9),
            "e2e_ms_p50": statistics.median(r["e2e_ms"] for r in sequential),
            "e2e_ms_p90": _percentile([r["e2e_ms"] for r in sequential], 0.9),
            "single_stream_tok_s": statistics.median(r["tokens"] / (r["e2e_ms"] / 1000) for r in sequential),
            "throughput_tok_s": sum(r["tokens"] for r in parallel) / wall,
            "concurrency": args.concurrency,
        }
        if data:
            from vlmgate.finetune.evaluate import exact_match

            answers = [await _answer(client, url, e.to_openai()) for e in data]
            result["accuracy"] = sum(exact_match(a, e.answer) for a, e in zip(answers, data, strict=True)) / len(data)
            result["answers"] = answers
    return result


def engine(path: Path) -> VLLMEngine:
    return VLLMEngine(SERVED_NAME, str(path), EngineConfig(), LimitsConfig())


async def bench_model(path: Path, prompts: list[list[dict]], args: argparse.Namespace, data) -> dict[str, Any]:
    served = engine(path)
    started = time.perf_counter()
    await served.start()
    try:
        startup_s = time.perf_counter() - started
        print(f"  {path.name}: engine ready in {startup_s:.0f} s, measuring ...", file=sys.stderr, flush=True)
        result = await measure(served.base_url, prompts, args, data)
        result["startup_s"] = startup_s
        return result
    finally:
        await served.stop()


def default_prompt() -> list[dict]:
    import base64
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (112, 112), "white")
    ImageDraw.Draw(image).ellipse((20, 20, 90, 90), fill="red")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    url = f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": "What colour is the shape?"}]}]  # fmt: skip


def table(results: dict[str, dict[str, Any]]) -> str:
    rows = ["| model | TTFT p50 ms | e2e p50 ms | e2e p90 ms | 1-stream tok/s | throughput tok/s | accuracy |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in results.items():
        accuracy = f"{r['accuracy']:.1%}" if "accuracy" in r else "-"
        throughput = f"{r['throughput_tok_s']:.1f} (x{r['concurrency']})"
        rows.append(f"| {name} | {r['ttft_ms_p50']:.1f} | {r['e2e_ms_p50']:.1f} | {r['e2e_ms_p90']:.1f} | "
                    f"{r['single_stream_tok_s']:.1f} | {throughput} | {accuracy} |")  # fmt: skip
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="INT4 vs bf16 latency, throughput and accuracy on one vLLM build.")
    parser.add_argument("--bf16", required=True, type=Path, help="the original (bf16/fp32) model directory")
    parser.add_argument("--int4", required=True, type=Path, action="append", help="INT4 checkpoint (repeatable)")
    parser.add_argument("--data", type=Path, help="held-out JSONL: prompts for timing and served accuracy")
    parser.add_argument("--data-limit", type=int, default=100, help="held-out records used (default: 100)")
    parser.add_argument("--latency-requests", type=int, default=16, help="sequential requests (default: 16)")
    parser.add_argument("--concurrency", type=int, default=16, help="parallel requests (default: 16)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens generated per request (default: 32)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    data = None
    if args.data:
        from vlmgate.quantize.evaluate import load_data

        data = load_data(args.data, args.data_limit)
    prompts = [e.to_openai() for e in data[:16]] if data else [default_prompt()]
    models = {f"bf16 ({args.bf16.name})": args.bf16} | {f"INT4 ({p.name})": p for p in args.int4}
    try:  # before any engine starts: a model this machine cannot serve would only fail after the others' runs
        for path in models.values():
            engine(path).command(0)
    except EngineStartError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    results = {}
    for name, path in models.items():
        results[name] = asyncio.run(bench_model(path, prompts, args, data))
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
