"""`vlmgate finetune`: check data, train a (Q)LoRA adapter, evaluate it against the base, push it to a gateway.

Run as:
    vlmgate finetune check DATA.jsonl [--eval HELDOUT.jsonl] [--model DIR] [--max-length N]
    vlmgate finetune train CONFIG.yaml [key=value ...] [--no-resume] [--push URL]
    vlmgate finetune eval --base DIR --adapter DIR --data HELDOUT.jsonl [--out DIR]
    vlmgate finetune push ADAPTER_DIR --url URL [--name NAME] [--admin-key KEY]
    vlmgate finetune convert IN.jsonl OUT.jsonl    (LLaMA-Factory / ms-swift -> vlmgate format)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _add_push_args(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--push", "--url", dest="url", required=required, metavar="URL",
                        help="gateway URL: register + hot-load the adapter (POST URL/v1/adapters)")  # fmt: skip
    parser.add_argument("--admin-key", help="gateway admin key (default: env VLMGATE_ADMIN_KEY)")
    parser.add_argument("--version", dest="adapter_version", help="version label recorded by the gateway")
    parser.add_argument("--pinned", action="store_true", help="keep the adapter loaded (exempt from LRU eviction)")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="validate data: every bad line, near-duplicates, leakage, statistics")
    check.add_argument("data", help="training JSONL")
    check.add_argument("--eval", dest="eval_data", help="held-out JSONL, checked too and for leakage from DATA")
    check.add_argument("--model", help="base model dir: also checks lengths against --max-length with its processor")
    check.add_argument("--max-length", type=int, default=2048, help="max tokens per example (default: 2048)")
    check.add_argument("--hash-distance", type=int, default=6,
                       help="perceptual-hash bits within which images are near-duplicates (default: 6)")  # fmt: skip

    train = sub.add_parser("train", help="train an adapter from a YAML config (see finetune/examples/)")
    train.add_argument("config", nargs="?", help="YAML config; settings may also all come from key=value overrides")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="override config settings, e.g. rank=16")
    train.add_argument("--no-resume", action="store_true", help="start over even if output_dir has a checkpoint")
    train.add_argument("--no-eval", action="store_true", help="skip the base-vs-adapter evaluation at the end")
    train.add_argument("--help-config", action="store_true", help="list every config setting with its default")
    _add_push_args(train, required=False)

    ev = sub.add_parser("eval", help="compare base and base+adapter on held-out data (exact match, token F1)")
    ev.add_argument("--base", required=True, help="base model directory")
    ev.add_argument("--adapter", required=True, help="adapter directory")
    ev.add_argument("--data", required=True, help="held-out JSONL")
    ev.add_argument("--out", help="directory for eval.md and eval.json (default: the adapter's parent)")
    ev.add_argument("--max-new-tokens", type=int, default=32, help="greedy tokens per answer (default: 32)")

    push = sub.add_parser("push", help="register and hot-load an adapter into a running gateway")
    push.add_argument("adapter", help="adapter directory (with vlmgate_adapter.json)")
    push.add_argument("--name", help="adapter name (default: the manifest's)")
    _add_push_args(push, required=True)

    convert = sub.add_parser("convert", help="rewrite LLaMA-Factory / ms-swift JSONL in vlmgate's format")
    convert.add_argument("src", help="input JSONL")
    convert.add_argument("dst", help="output JSONL (images inlined as data URLs)")
    return parser


def _check(args) -> int:
    from vlmgate.finetune.datacheck import check_files

    report = check_files(args.data, args.eval_data, args.model, args.max_length, args.hash_distance)
    print(report.render())
    return 1 if report.issues else 0


def _push(adapter: Path, args) -> int:
    from vlmgate.finetune.export import PushError, push

    try:
        record = push(adapter, args.url, getattr(args, "name", None), args.admin_key, args.adapter_version, args.pinned)
    except PushError as exc:
        print(f"push failed: {exc}", file=sys.stderr)
        return 1
    print(f"pushed {adapter} to {args.url}: {record}")
    return 0


def _train(args) -> int:
    from vlmgate.finetune.config import ConfigError, describe_fields, load_config, parse_overrides
    from vlmgate.finetune.data import DataError

    if args.help_config:
        print("settings (YAML keys or key=value overrides):\n" + describe_fields())
        return 0
    if args.config and "=" in args.config and not Path(args.config).exists():  # no config file, overrides only
        args.overrides.insert(0, args.config)
        args.config = None
    try:
        cfg = load_config(args.config, parse_overrides(args.overrides))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    from vlmgate.finetune.run import run_training

    try:
        result = run_training(cfg, evaluate=not args.no_eval, resume=not args.no_resume)
    except DataError as exc:
        print(f"refusing to train: {exc}\n(run `vlmgate finetune check` for the full data report)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(f"adapter: {result.adapter_dir}  ({result.steps} steps in {result.train_seconds:.0f} s)")
    print(f"loss curve: {result.run_dir / 'loss.png'}")
    return _push(result.adapter_dir, args) if args.url else 0


def _eval(args) -> int:
    from vlmgate.finetune.data import DataError, read_jsonl
    from vlmgate.finetune.evaluate import evaluate

    examples, issues = read_jsonl(args.data)
    if issues:
        print(DataError(issues), file=sys.stderr)
        return 1
    report = evaluate(args.base, args.adapter, examples, args.max_new_tokens)
    json_path, md_path = report.write(args.out or Path(args.adapter).resolve().parent)
    print(report.markdown())
    print(f"written: {md_path}, {json_path}")
    return 0


def _convert(args) -> int:
    from vlmgate.finetune.data import DataError, read_jsonl, write_jsonl

    examples, issues = read_jsonl(args.src)
    if issues:
        print(DataError(issues), file=sys.stderr)
        return 1
    print(f"wrote {write_jsonl(examples, args.dst)} examples to {args.dst}")
    return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    if args.command == "push":
        return _push(Path(args.adapter), args)
    return {"check": _check, "train": _train, "eval": _eval, "convert": _convert}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
