"""`vlmgate loadtest`: load-test an OpenAI-compatible endpoint against latency SLOs.

Run as: vlmgate loadtest --url http://127.0.0.1:8000 --model base --model my-adapter=2 --rate 4 \\
            --num-requests 200 --images-per-request 1 --max-tokens 64 --slo ttft_ms=500,tpot_ms=33 --report out/
Exit code: 0 when the SLO is met (without --slo: when enough requests succeeded), 1 when missed, 2 on usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from pydantic import ValidationError

from vlmgate.loadtest.config import ConfigError, LoadTestConfig, parse_image_sizes, parse_model, parse_slo

EPILOG = """\
definitions: TTFT = send -> first token chunk; TPOT = (E2E - TTFT) / (output tokens - 1), the first token
excluded as in vLLM's benchmark; ITL = gaps between token chunks; E2E = send -> last token chunk.
examples:
  vlmgate loadtest --url http://127.0.0.1:8000 --concurrency 4 --num-requests 50
  vlmgate loadtest --url http://127.0.0.1:8000 --model base --model ad1=3 --model ad2=1 --rate 2 --arrival gamma \\
      --burstiness 0.5 --duration 60 --images-per-request 1 --image-size 224x224:3,448x448:1 --report out/
  vlmgate loadtest --url http://127.0.0.1:8000 --sweep --slo ttft_ms=500,tpot_ms=33 --num-requests 40 --report sweep/
"""


def _parser(prog: str | None) -> argparse.ArgumentParser:
    fields = LoadTestConfig.model_fields

    def h(name: str) -> str:
        default = fields[name].default
        described = fields[name].description or ""
        if fields[name].is_required() or default in (None, [], "") or callable(default):
            return described
        return f"{described} (default {default})"

    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = p.add_argument_group("target")
    target.add_argument("--url", required=True, help=h("url"))
    target.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME[=WEIGHT]",
        help="model or adapter, repeatable; WEIGHT = relative share (default: first served model)",
    )
    target.add_argument("--popularity", choices=["uniform", "zipf"], default="uniform", help=h("popularity"))
    target.add_argument("--zipf-s", type=float, metavar="S", default=1.0, help=h("zipf_s"))
    target.add_argument("--api-key", metavar="KEY", help=h("api_key"))
    target.add_argument("--timeout", type=float, metavar="S", default=300.0, dest="timeout_s", help=h("timeout_s"))
    target.add_argument(
        "--metrics-url", metavar="URL", help=h("metrics_url") + " (e.g. the engine's, behind a gateway)"
    )
    target.add_argument("--no-metrics", action="store_false", dest="scrape_metrics", help="do not scrape /metrics")

    load = p.add_argument_group("load")
    load.add_argument(
        "--concurrency", type=int, metavar="N", help=h("concurrency") + " (default 1 when --rate is not given)"
    )
    load.add_argument("--rate", type=float, metavar="R", help=h("rate"))
    load.add_argument("--arrival", choices=["poisson", "gamma", "constant"], default="poisson", help=h("arrival"))
    load.add_argument("--burstiness", type=float, metavar="K", default=1.0, help=h("burstiness"))
    load.add_argument("--max-concurrency", type=int, metavar="N", help=h("max_concurrency"))
    load.add_argument("--num-requests", type=int, metavar="N", help=h("num_requests"))
    load.add_argument("--duration", type=float, metavar="S", dest="duration_s", help=h("duration_s"))
    load.add_argument("--warmup", type=int, metavar="N", default=2, dest="warmup_requests", help=h("warmup_requests"))
    load.add_argument("--seed", type=int, default=0, help=h("seed"))

    work = p.add_argument_group("requests")
    work.add_argument("--dataset", type=Path, metavar="FILE.jsonl", help=h("dataset"))
    work.add_argument("--prompt-words", type=int, metavar="N", default=64, help=h("prompt_words"))
    work.add_argument("--images-per-request", type=int, metavar="N", default=0, help=h("images_per_request"))
    work.add_argument(
        "--image-size",
        default="224x224",
        metavar="WxH[:W],...",
        help="image size mix, e.g. 224x224:3,448x448:1 (default 224x224)",
    )
    work.add_argument("--max-tokens", type=int, metavar="N", default=64, help=h("max_tokens"))
    work.add_argument("--ignore-eos", action="store_true", help=h("ignore_eos"))
    work.add_argument("--temperature", type=float, default=0.0, help=h("temperature"))

    slo = p.add_argument_group("SLO and output")
    slo.add_argument("--slo", default="", metavar="KEY=MS,...", help="targets: ttft_ms, tpot_ms, itl_ms, e2e_ms")
    slo.add_argument("--attainment", type=float, default=0.95, help=h("attainment"))
    slo.add_argument("--sweep", action="store_true", help="find the highest rate meeting the SLO (open loop)")
    slo.add_argument(
        "--sweep-rates",
        default="",
        metavar="R,R,...",
        help="explicit rates to sweep (default: start at --rate or 1, double while met, then bisect)",
    )
    slo.add_argument("--sweep-steps", type=int, default=6, help="max doubling steps of an automatic sweep")
    slo.add_argument("--sweep-refine", type=int, default=2, help="bisection steps after the first miss")
    slo.add_argument("--report", type=Path, metavar="DIR", help="write report.json, report.md and PNG plots")
    slo.add_argument("--no-progress", action="store_false", dest="progress", help="no live progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> tuple[LoadTestConfig, list[float] | None]:
    """The validated config and sweep rates; raises ConfigError with every problem found."""
    errors: list[str] = []
    values = {k: v for k, v in vars(args).items() if k in LoadTestConfig.model_fields and v is not None}
    values.pop("model", None)
    for key, parse, raw in (
        ("models", lambda t: [parse_model(m) for m in t], args.model),
        ("image_sizes", parse_image_sizes, args.image_size),
        ("slo", parse_slo, args.slo),
    ):
        try:
            values[key] = parse(raw)
        except (ValueError, ValidationError) as exc:
            values.pop(key, None)  # keep validating the rest, so every error is reported at once
            errors.append(str(exc).splitlines()[0] if isinstance(exc, ValidationError) else str(exc))
    rates = None
    if args.sweep_rates:
        try:
            rates = sorted(float(r) for r in args.sweep_rates.split(",") if r.strip())
        except ValueError:
            errors.append(f"--sweep-rates {args.sweep_rates!r}: expected numbers like 1,2,4")
    if args.sweep and args.concurrency is not None:
        errors.append("--sweep varies the open-loop --rate; drop --concurrency")
    if (args.sweep_rates or args.sweep_steps != 6) and not args.sweep:
        errors.append("--sweep-rates/--sweep-steps need --sweep")
    try:
        config = LoadTestConfig(**values)
    except ConfigError as exc:
        raise ConfigError(errors + exc.errors) from None
    except ValidationError as exc:
        raise ConfigError(errors + [f"--{'-'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]) from None
    if config.dataset is not None:
        from vlmgate.loadtest.dataset import load_chat_dataset

        try:
            load_chat_dataset(config.dataset)  # every bad line now, not mid-run
        except ConfigError as exc:
            errors += exc.errors
    if errors:
        raise ConfigError(errors)
    return config, rates


async def _execute(config: LoadTestConfig, args: argparse.Namespace, rates: list[float] | None) -> dict:
    from vlmgate.loadtest.prom import server_side
    from vlmgate.loadtest.report import build_report
    from vlmgate.loadtest.runner import run_load
    from vlmgate.loadtest.stats import summarize

    if not args.sweep:
        result = await run_load(config, progress=args.progress)
        summary = summarize(result.records, result.duration_s, config.slo, config.attainment)
        server = server_side(result.metrics_before, result.metrics_after) if result.metrics_after else None
        if result.warmup_errors:
            print(
                f"warning: {len(result.warmup_errors)} warm-up request(s) failed: {result.warmup_errors[0]}",
                file=sys.stderr,
            )
        return build_report(config, result.records, summary, server)

    from vlmgate.loadtest.sweep import run_sweep

    def show(row: dict) -> None:
        print(
            f"rate {row['rate']:.3g}/s: attainment {100 * row['attainment']:.1f}%, TTFT p99 "
            f"{row['ttft_p99_ms'] or float('nan'):.1f} ms -> {'met' if row['met'] else 'missed'}",
            file=sys.stderr,
        )

    outcome = await run_sweep(config, rates, args.sweep_steps, args.sweep_refine, on_step=show, progress=args.progress)
    result, summary, server = outcome.best or outcome.last
    summary["slo"]["met"] = outcome.best_rate is not None
    sweep = {
        "steps": outcome.steps,
        "best_rate": outcome.best_rate,
        "targets": config.slo.targets(),
        "attainment_target": config.attainment,
    }
    # The summary and requests are those of the best (else the last) step: label them with that step's rate.
    shown = config.model_copy(update={"rate": outcome.best_rate or outcome.steps[-1]["rate"], "concurrency": None})
    return build_report(shown, result.records, summary, server, sweep)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = _parser(prog)
    args = parser.parse_args(argv)
    try:
        config, rates = config_from_args(args)
    except ConfigError as exc:
        print(f"{parser.prog}: invalid options:\n{exc}", file=sys.stderr)
        return 2
    from vlmgate.loadtest.report import console_table, write_report

    try:
        report = asyncio.run(_execute(config, args, rates))
    except ConfigError as exc:  # found only once the server answered (e.g. no model to default to)
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    print(console_table(report))
    if args.report:
        written = write_report(report, args.report)
        print(f"report: {', '.join(str(p) for p in written)}")
    return 0 if report["summary"]["slo"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
