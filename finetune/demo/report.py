"""The demo model's training plot (PNG) and model card (Markdown), written from its history and evaluation.

Used by `vlmgate demo train`; to redraw from a trained model directory:
    python -m vlmgate.finetune.demo.report MODEL_DIR EVAL_JSON OUT_DIR
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

from vlmgate.finetune.demo.evaluate import markdown_table
from vlmgate.finetune.demo.questions import KINDS, TRAIN, UNSEEN, offers_choice
from vlmgate.finetune.demo.shapes import OOD_SIZES, TRAIN_SIZE_RANGE


def plot_history(history: dict, png: str | Path) -> Path:
    """Loss of both stages and held-out exact match per question kind, against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(15, 4))
    s0 = history["stage0"]
    ax0.plot([r["step"] for r in s0], [r["loss"] for r in s0], label="aux-head loss")
    for key in ("colour", "shape", "count", "cells"):
        ax0.plot([r["step"] for r in s0], [r[key] for r in s0], label=f"{key} acc (train batch)", alpha=0.8)
    ax0.set(title="stage 0: vision tower + merger", xlabel="step")
    ax0.legend(fontsize=7)
    s1 = history["stage1"]
    ax1.plot([r["step"] for r in s1], [r["loss"] for r in s1], label="answer loss")
    ax1.set(title="stage 1: whole model, answer loss", xlabel="step", yscale="log")
    ax1.legend(fontsize=7)
    ev = history["eval"]
    for kind in KINDS:
        ax2.plot([r["step"] for r in ev], [r.get(kind, float("nan")) for r in ev], marker="o", label=kind)
    ax2.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
    ax2.set(title="stage 1: held-out exact match", xlabel="step", ylim=(0, 1.02))
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return Path(png)


def _size(model_dir: Path) -> tuple[int, float]:
    """Parameter count (from the safetensors headers) and directory size in MB."""
    from math import prod

    from safetensors import safe_open

    params = 0
    for f in model_dir.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            params += sum(prod(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118 - not a dict
    size_mb = sum(f.stat().st_size for f in model_dir.iterdir() if f.is_file()) / 1e6
    return params, size_mb


def write_model_card(path: str | Path, model_dir: str | Path, history: dict, report: dict, meta: dict) -> Path:
    """MODEL_CARD.md: what the model is, how it was trained, how big it is, what it scores, how long it took."""
    model_dir = Path(model_dir)
    cfg = history["config"]
    params, size_mb = _size(model_dir)
    t = history["timing_s"]
    gen = report.get("generate_check", {})
    averaging = _weights_text(history)
    train_px = "{}-{}".format(*TRAIN_SIZE_RANGE)
    ood_px = " or ".join(f"{lo}-{hi}" for lo, hi in OOD_SIZES)
    text = f"""# vlmgate-demo: a tiny VLM that really sees

The model `vlmgate serve` serves by default (model id `vlmgate-demo`): a {params / 1e6:.2f} M-parameter
Qwen2-VL-architecture model trained from scratch on CPU on generated images of coloured shapes. It is trained to answer
short questions about one picture: the colour, the shape, how many there are, where a single shape is, and a short
description. It knows nothing else; it exists so that the project's demo, tests and fine-tuning examples run
on any CPU without a download.

## Use
Send one image (best: a drawing like those `vlmgate demo generate` writes, any size; it is scaled to about
112x112) and a question:
"What colour is the shape?", "How many objects are there?", "Where is the triangle?", "Describe the image.", or a
choice: "Is it red or blue?", "Are there two or three shapes?".
Answers: a colour (red, green, blue, yellow, purple, orange), a shape (circle, square, triangle), a number
(1-4), a place (top left, top, top right, left, center, right, bottom left, bottom, bottom right) or a short
description ("three red circles").

## Data
`vlmgate.finetune.demo.shapes` draws 1-4 identical shapes (one colour, one kind) in distinct cells of a 3x3 grid
on blotchy or gradient low-saturation backgrounds, with varied shades, sizes ({train_px} px) and jitter.
`questions.py` asks about them in {sum(len(v) for v in TRAIN.values())} training templates (plus varied nouns,
image words, prefixes, suffixes, casing; {_choice_templates()} of them offer a choice of two or three answers, the
right one among them), counts balanced, kinds balanced in stage 0. Training used
{cfg["pool_size"]} pre-rendered images (and their mirror images) with a fresh question every
time{_if_set(cfg, "shuffle_backgrounds")}{_if_set(cfg, "question_noise")}.
`vlmgate demo generate` writes the same data as JSONL in the project's chat format.

## Recipe (`vlmgate demo train`, defaults)
- Architecture: text {cfg["model"]["num_layers"]} layers x {cfg["model"]["hidden_size"]} hidden, vision depth
  {cfg["model"]["vision_depth"]} x {cfg["model"]["vision_embed_dim"]}, 16 image tokens per 112x112 image, byte-level
  BPE tokenizer (vocab {cfg["model"]["vocab_size"]}) trained offline in which every answer word is one token.
  Text M-RoPE: rope_theta {cfg["model"]["rope_theta"]:g}, mrope_section {cfg["model"]["mrope_section"]}. Chat
  template: Qwen2-VL's, {_system_prompt(cfg["model"].get("system_prompt"))}.
- Stage 0 ({cfg["stage0_steps"]} steps, batch {cfg["stage0_batch"]}, lr {cfg["stage0_lr"]}): vision tower + merger
  alone with linear heads on the merged tokens: colour, shape, count (max- and mean-pooled), occupied cells (flattened),
  shape-centre flags per token{_if_set(cfg, "mass_weight")}{_if_set(cfg, "token_shape_weight")}.
- Stage 1 ({cfg["stage1_steps"]} steps, batch {cfg["stage1_batch"]}{_length_groups(cfg)}, lr LM {cfg["lr_lm"]} / vision
  {cfg["lr_vision"] or "0 (tower frozen)"} / merger {cfg["lr_merger"]}, cosine, AdamW, grad clip {cfg["grad_clip"]}):
  {"whole model" if cfg["lr_vision"] else "language model and merger"} on question
  answering{_kind_weights(cfg)}{_if_set(cfg, "follow_ups")}, loss only on the answers and `<|im_end|>`,
  stage-0 heads kept as an auxiliary loss (weight {cfg["aux_weight"]}), and summary heads (weight
  {cfg.get("summary_weight", 0)}) on the language model's hidden state at `<|vision_end|>` after text layer
  {cfg.get("summary_layer", 0)}: colour, shape, count, occupied cells, rows and columns. `<|vision_end|>` sits at
  one fixed M-RoPE offset from every image token, so it can learn once where the shapes are; an answer token's
  offset to the image changes with the question's length.{_if_set(cfg, "answer_summary_layer")}{averaging}
- Precision: trained in fp32; shipped weights in {meta["dtype"]} ({size_mb:.1f} MB directory).

![training](training.png)

## Held-out exact match
Fresh scenes from a seed stream disjoint from training ({report["overlap_with_training"]} scenes shared with the
training pool), {report["per_kind"]} per kind and set. `heldout`: the training distribution; `ood`: flat
plain backgrounds, shapes centred in their cell, sizes {ood_px} px, shades mixed 25-35% towards white or
black; `unseen`: the training images asked with {sum(len(v) for v in UNSEEN.values())} phrasings never used in
training (nor in the tokenizer's corpus); `followup`: a second question about the same image, after a first one of
another kind and its right answer, scored alone (a description is not asked as a follow-up). Measured with
`vlmgate demo eval` on the shipped weights:

{markdown_table(report)}

Cross-check: real `generate()` through the processor and chat template on {gen.get("n", 0)} held-out examples
scored exact match {gen.get("exact_match", float("nan")):.3f} and agreed with the teacher-forced scoring above on
{gen.get("agreement", float("nan")):.3f} of them.

## Training time
Measured wall time of `vlmgate demo train`: {t["total"] / 60:.1f} min in total (tokenizer, model build and
image pool {t["prepare"]:.0f} s, stage 0 {t["stage0"] / 60:.1f} min, stage 1 {t["stage1"] / 60:.1f} min,
periodic evaluation included) on {meta["machine"]}, with {cfg["threads"]} torch thread(s).
{_contention(history)}
{meta.get("note", "")}
"""
    Path(path).write_text(text)
    return Path(path)


def _weights_text(history: dict) -> str:
    weights = history.get("weights")
    if not weights:
        return ""
    cfg = history["config"]
    return (
        f"\n- Weight averaging: from {cfg['ema_start']:.0%} of stage 1 on, an exponential moving average of the weights"
        f" (decay {cfg['ema_decay']}); at the end a validation set of its own ({cfg['validation_per_kind']} per kind)"
        f" scored the raw weights {weights['raw']:.3f} and the averaged ones {weights['averaged']:.3f}, and the"
        f" {weights['kept']} ones were kept."
    )


# Sentences of the card that only apply when a recipe knob is on: (config key, text formatted with the config).
OPTIONAL_TEXTS = {
    "mass_weight": (
        ", and each token's share of every shape's area (regression, weight {mass_weight}): summed over the image it"
        " is the count, however a shape straddles tokens, so the language model can count with one uniform attention"
    ),
    "token_shape_weight": (
        ", and the kind of shape of every token holding a quarter of a shape or more (weight {token_shape_weight}):"
        " a shape label per token, not just one per image"
    ),
    "shuffle_backgrounds": (
        "; each draw laid one pool image's shapes over another random pool image's background (each possibly"
        " mirrored), so that no image can be recalled by its background instead of its shapes"
    ),
    "follow_ups": (
        "; {follow_up_share:.0%} of the rows are conversations about one image, a question and its follow-ups (up to"
        " {follow_ups}) of other kinds (a description alone; position never with count), so that the image's tokens"
        " serve several answers and follow-up questions are answered too"
    ),
    "answer_summary_layer": (
        " The same heads (weight {answer_summary_weight}) read the state after text layer {answer_summary_layer} that"
        " predicts each answer's first token, whatever the question asks: every row teaches the answer position to"
        " gather the image's facts, and the last layer only picks the one asked for."
    ),
    "question_noise": (
        "; {question_noise:.0%} of the questions had 1-3 made-up words inserted, so that the model learns to find"
        " its cue words among words it never read"
    ),
}


def _kind_weights(cfg: dict) -> str:
    weights = cfg.get("stage1_kind_weights") or {}
    if len(set(weights.values())) < 2:
        return ""
    return " (kinds asked with relative weights " + ", ".join(f"{k} {w}" for k, w in weights.items()) + ")"


def _choice_templates() -> int:
    return sum(offers_choice(t) for templates in TRAIN.values() for t in templates)


def _length_groups(cfg: dict) -> str:
    groups = cfg.get("length_groups", 1)
    if groups < 2:
        return ""
    return f" (drawn {groups} batches at a time and grouped by length, so that a batch pads little)"


def _system_prompt(prompt: str | None) -> str:
    if prompt:
        return f'with the default system prompt "{prompt}" when a conversation brings none'
    return "without a default system prompt (a conversation's own system message is kept)"


def _if_set(cfg: dict, key: str) -> str:
    return OPTIONAL_TEXTS[key].format(**cfg) if cfg.get(key) else ""


def _contention(history: dict) -> str:
    """How busy the machine was while training (other jobs share it), from the recorded load averages."""
    loads = [r["load1"] for r in history["stage0"] + history["eval"] if "load1" in r]
    if not loads:
        return ""
    cores, threads = os.cpu_count() or 1, history["config"]["threads"]
    mean = sum(loads) / len(loads)
    text = (
        f"The 1-minute load average during training was {mean:.1f} on average (min {min(loads):.1f}, "
        f"max {max(loads):.1f}) on {cores} cores, up to {threads} of it from this run's own thread(s)"
    )
    if mean > threads + 0.5:
        return text + "; other jobs shared the CPU, so an idle machine trains faster."
    return text + "."


def machine_description() -> str:
    return f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), Python {sys.version.split()[0]}"


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    model_dir, eval_json, out_dir = Path(args[0]), Path(args[1]), Path(args[2])
    history = json.loads((model_dir / "history.json").read_text())
    plot_history(history, out_dir / "training.png")
    meta = json.loads((model_dir / "vlmgate_train_meta.json").read_text())
    write_model_card(out_dir / "MODEL_CARD.md", model_dir, history, json.loads(eval_json.read_text()), meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
