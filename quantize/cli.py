"""`vlmgate quantize`: INT4 (W4A16) bases with llm-compressor, their measured cost, and the adapter drift check.

Run as:
  vlmgate quantize --model DIR --method awq|gptq|rtn --output OUT [--calibration DATA.jsonl] [--heldout HELD.jsonl]
  vlmgate quantize check-adapter --base BF16 --quantized INT4 --adapter DIR --data HELDOUT.jsonl
  vlmgate quantize setup-env [--env-dir DIR]     (create the isolated llm-compressor environment ahead of time)
  python -m vlmgate.quantize.bench --bf16 DIR --int4 DIR   (INT4 vs bf16 latency/throughput on one engine build)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlmgate.quantize.config import QuantizeConfig

_EPILOG = """\
The first run creates an environment of its own for llm-compressor (its pins conflict with the engine's) under
~/.cache/vlmgate/quantize-env (or --env-dir / $VLMGATE_QUANTIZE_ENV) and reuses it afterwards.
Examples:
  vlmgate quantize --model finetune/demo/vlmgate-demo --method awq --output runs/demo-awq \\
      --calibration calib.jsonl --heldout heldout.jsonl
  vlmgate quantize --model DIR --method rtn --output OUT       (data-free, seconds)
"""


def _field_help(name: str) -> str:
    field = QuantizeConfig.model_fields[name]
    if field.is_required():
        return str(field.description)
    default = field.get_default(call_default_factory=True)
    return f"{field.description} (default: {default})" if default is not None else str(field.description)


def _quantize_parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Quantize a VLM's language model to INT4 (W4A16, compressed-tensors) and report what it costs.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, type=Path, help=_field_help("model"))
    parser.add_argument("--method", choices=["awq", "gptq", "rtn"], default="awq", help=_field_help("method"))
    parser.add_argument("--output", required=True, type=Path, help=_field_help("output"))
    parser.add_argument("--calibration", type=Path, help=_field_help("calibration"))
    parser.add_argument("--calibration-samples", type=int, default=64, help=_field_help("calibration_samples"))
    parser.add_argument("--heldout", type=Path, help=_field_help("heldout"))
    parser.add_argument("--heldout-limit", type=int, help=_field_help("heldout_limit"))
    parser.add_argument("--group-size", type=int, default=128, help=_field_help("group_size"))
    parser.add_argument("--symmetric", action="store_true", help=_field_help("symmetric"))
    parser.add_argument("--ignore", nargs="+", help=_field_help("ignore"))
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help=_field_help("dtype"))  # fmt: skip
    parser.add_argument("--device", default="auto", help=_field_help("device"))
    parser.add_argument("--report", dest="report_dir", type=Path, help=_field_help("report_dir"))
    parser.add_argument("--env-dir", type=Path, help=_field_help("env_dir"))
    parser.add_argument("--overwrite", action="store_true", help=_field_help("overwrite"))
    return parser


def _check_adapter(argv: list[str], prog: str) -> int:
    from vlmgate.quantize import drift

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Compare a LoRA adapter's answers on the bf16 base and on its INT4 copy (agreement, accuracy); "
        f"writes {drift.FILENAME} into the adapter directory for the gateway's drift policy.",
    )
    parser.add_argument("--base", required=True, type=Path, help="the bf16/fp32 base the adapter was trained on")
    parser.add_argument("--quantized", required=True, type=Path, help="the INT4 checkpoint it will be served on")
    parser.add_argument("--adapter", required=True, type=Path, help="PEFT LoRA adapter directory")
    parser.add_argument("--data", required=True, type=Path, help="held-out JSONL (reference answers last)")
    parser.add_argument("--limit", type=int, help="use only the first N records")
    parser.add_argument("--threshold", type=float, default=drift.DEFAULT_THRESHOLD,
                        help=f"minimum agreement to pass (default: {drift.DEFAULT_THRESHOLD})")  # fmt: skip
    parser.add_argument("--out", type=Path, help=f"where to write the result (default: ADAPTER/{drift.FILENAME})")
    parser.add_argument("--strict", action="store_true", help="exit 1 when agreement is below the threshold")
    args = parser.parse_args(argv)
    problems = [f"--{name} {path}: not found" for name, path in
                (("base", args.base), ("quantized", args.quantized), ("adapter", args.adapter), ("data", args.data))
                if not path.exists()]  # fmt: skip
    if args.adapter.is_dir() and not (args.adapter / "adapter_config.json").is_file():
        problems.append(f"--adapter {args.adapter}: no adapter_config.json (not a PEFT adapter directory)")
    if args.quantized.is_dir() and (args.quantized / "config.json").is_file():
        from vlmgate.quantize.config import quantization_config

        if quantization_config(args.quantized) is None:
            problems.append(f"--quantized {args.quantized}: not a quantized checkpoint (no quantization_config)")
    if problems:
        print("error: cannot start:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    result = drift.check_adapter(args.base, args.quantized, args.adapter, args.data, args.threshold, args.limit)
    path = drift.write_result(result, args.out or args.adapter)
    ok, message = drift.evaluate_drift_policy(result, args.threshold, "refuse")
    print(
        f"agreement {result['agreement']:.1%} on {result['examples']} examples; accuracy bf16 "
        f"{result['accuracy_bf16']:.1%}, INT4 {result['accuracy_int4']:.1%}\n{message}\nwritten: {path}"
    )
    return 1 if args.strict and not ok else 0


def _setup_env(argv: list[str], prog: str) -> int:
    from vlmgate.quantize import env

    return env.main(argv)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or "vlmgate quantize"
    if argv and argv[0] == "check-adapter":
        return _check_adapter(argv[1:], f"{prog} check-adapter")
    if argv and argv[0] == "setup-env":
        return _setup_env(argv[1:], f"{prog} setup-env")
    args = vars(_quantize_parser(prog).parse_args(argv))
    if args["ignore"] is None:
        args.pop("ignore")
    from vlmgate.quantize.job import QuantizeError, quantize

    try:
        report = quantize(QuantizeConfig(**args))
    except QuantizeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from vlmgate.quantize.report import to_markdown

    print(to_markdown(report), end="")
    return 0
