"""`vlmgate demo`: the project's own tiny VLM, from random weights to the trained demo model.

Run as:
  vlmgate demo build-tiny DIR                 random-weight tiny Qwen2-VL (seconds; tests use it)
  vlmgate demo generate OUT_DIR [--n 1000]    shapes dataset as chat JSONL (the fine-tune module's format)
  vlmgate demo train [--out DIR]              train the demo model (two stages), evaluate, plot, model card
  vlmgate demo eval [MODEL_DIR]               held-out exact match per question kind (default: shipped model)

The shipped model was made with:
  vlmgate demo train --out finetune/demo/vlmgate-demo --report-dir finetune/demo --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TRAIN_HELP = "train the demo VLM from scratch (two stages), evaluate it, write the plot and model card"


def _train(args: argparse.Namespace) -> int:
    from vlmgate.finetune.demo.recipe import DemoTrainConfig, train

    overrides = {
        "stage0_steps": args.stage0_steps,
        "stage1_steps": args.stage1_steps,
        "threads": args.threads,
        "seed": args.seed,
    }
    if args.config:
        cfg = DemoTrainConfig.from_yaml(args.config, **overrides)
    else:
        cfg = DemoTrainConfig(**{k: v for k, v in overrides.items() if v is not None})
    history = train(cfg, args.out)
    finish(args.out, history, args.report_dir or args.out, per_kind=args.eval_per_kind, fp32=args.fp32)
    return 0


def finish(
    out: str | Path, history: dict, report_dir: str | Path, per_kind: int = 1000, fp32: bool = False, note: str = ""
) -> dict:
    """After training: full evaluation, bf16 weights if they score as well, plot and model card."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from vlmgate.finetune.demo.evaluate import evaluate_model, markdown_table
    from vlmgate.finetune.demo.report import machine_description, plot_history, write_model_card

    out, report_dir = Path(out), Path(report_dir)
    report = evaluate_model(out, per_kind=per_kind)
    dtype = "float32"
    if not fp32:
        # Keep bf16 (half the size) only if no kind in any set loses more than one point.
        model = Qwen2VLForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
        model.to(torch.bfloat16).save_pretrained(out)
        bf16 = evaluate_model(out, per_kind=per_kind)
        worst = min(bf16["sets"][s][k] - v for s, scores in report["sets"].items() for k, v in scores.items())
        if worst >= -0.01:
            report, dtype = bf16, "bfloat16"
        else:
            print(f"bf16 weights lose {-worst:.3f} on some kind; keeping fp32")
            model.to(torch.float32).save_pretrained(out)
    report_dir.mkdir(parents=True, exist_ok=True)
    meta = {"dtype": dtype, "machine": machine_description(), "note": note}
    (out / "vlmgate_train_meta.json").write_text(json.dumps(meta, indent=2))
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    plot_history(history, report_dir / "training.png")
    write_model_card(report_dir / "MODEL_CARD.md", out, history, report, meta)
    print(markdown_table(report))
    print(f"trained in {history['timing_s']['total'] / 60:.1f} min; model in {out}, card in {report_dir}")
    return report


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Build, train and evaluate the project's demo VLM.",
        epilog="The shipped model: vlmgate demo train --out finetune/demo/vlmgate-demo --report-dir finetune/demo "
        "--threads 2",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("build-tiny", help="write a random-weight tiny Qwen2-VL model (seconds, offline)")
    tiny.add_argument("out_dir", help="directory to write the model into")
    tiny.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default: 0)")
    sub.add_parser("generate", help="write the shapes dataset as chat JSONL", add_help=False)
    tr = sub.add_parser("train", help=TRAIN_HELP, description=TRAIN_HELP)
    tr.add_argument("--out", default="vlmgate-demo", help="model directory to write (default ./vlmgate-demo)")
    tr.add_argument("--report-dir", help="where to write training.png and MODEL_CARD.md (default: --out)")
    tr.add_argument("--config", help="YAML file of DemoTrainConfig fields (vlmgate.finetune.demo.recipe)")
    tr.add_argument("--stage0-steps", type=int, help="override the vision-alignment steps")
    tr.add_argument("--stage1-steps", type=int, help="override the question-answering steps")
    tr.add_argument("--threads", type=int, help="torch threads (default 1; 2 helps only on an idle machine)")
    tr.add_argument("--seed", type=int, help="seed for weights, images and questions (default 0)")
    tr.add_argument("--eval-per-kind", type=int, default=1000, help="final evaluation size per kind and set")
    tr.add_argument("--fp32", action="store_true", help="ship fp32 weights even if bf16 scores as well")
    sub.add_parser("eval", help="held-out exact match per question kind", add_help=False)
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or "vlmgate demo"
    # generate and eval own their argument parsers (their modules run standalone too).
    if argv and argv[0] == "generate":
        from vlmgate.finetune.demo.data import main as generate_main

        return generate_main(argv[1:], prog=f"{prog} generate")
    if argv and argv[0] == "eval":
        from vlmgate.finetune.demo.evaluate import main as eval_main

        return eval_main(argv[1:], prog=f"{prog} eval")
    args = parser.parse_args(argv)
    if args.command == "build-tiny":
        from vlmgate.finetune.tiny_vlm import TinyVLMConfig, build_tiny_vlm

        print(f"tiny Qwen2-VL model written to {build_tiny_vlm(args.out_dir, TinyVLMConfig(seed=args.seed))}")
        return 0
    return _train(args)
