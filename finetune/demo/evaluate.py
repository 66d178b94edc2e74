"""Held-out evaluation of the demo VLM: exact match per question kind, on four sets it never trained on.

Run as: vlmgate demo eval [MODEL_DIR] [--per-kind 1000] [--json scores.json]

Sets (fresh scenes from a seed stream disjoint from training's; overlap with the training pool is checked):
  heldout  the training generator's distribution and phrasings
  ood      images drawn differently: flat plain backgrounds, shapes centred in their cell, sizes outside the
           training range, lighter/darker shades
  unseen   the training generator's images, asked with phrasings that never appear in training
  followup a second question about the same image, after a first one of another kind and its right answer
           (scored alone; a description is never asked as a follow-up)
Scoring is teacher-forced exact match, which equals greedy decoding's exact match; a sample is cross-checked
with real `generate()` through the processor and chat template, the path a server takes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from vlmgate.finetune.demo.data import chat_messages
from vlmgate.finetune.demo.questions import KINDS, Example, as_turns, ask, may_share_image, sample_example
from vlmgate.finetune.demo.shapes import render_many, sample_scene

EVAL_SEED = 1_000_003  # disjoint from the training streams ([seed, 1], [seed, 2])
SETS = {"heldout": ("train", "train"), "ood": ("ood", "train"), "unseen": ("train", "unseen")}
DEFAULT_MODEL = Path(__file__).with_name("vlmgate-demo")


def heldout_set(
    per_kind: int, *, style: str, phrasing: str, seed: int = 0, kinds: list[str] | tuple[str, ...] = KINDS
) -> tuple[list[Example], np.ndarray]:
    """per_kind examples of each question kind, with their rendered uint8 images."""
    rng = np.random.default_rng([EVAL_SEED, seed, ["train", "ood"].index(style), ["train", "unseen"].index(phrasing)])
    examples = [sample_example(rng, kind, style=style, phrasing=phrasing) for kind in kinds for _ in range(per_kind)]
    return examples, render_many([ex.scene for ex in examples])


def followup_set(per_kind: int, seed: int = 0) -> tuple[list[list[Example]], np.ndarray]:
    """Two-turn conversations about one held-out image, per_kind for each kind of follow-up question: a first
    question of another kind with its right answer (as if the model had given it), then the follow-up, which alone
    is scored. Kinds pair as in training (questions.may_share_image): position never with count, no description."""
    rng = np.random.default_rng([EVAL_SEED, seed, 2])
    asked = [k for k in KINDS if k != "describe"]
    conversations = []
    for kind in asked:
        for _ in range(per_kind):
            first = str(rng.choice([k for k in asked if may_share_image(k, kind)]))
            scene = sample_scene(rng, count=1 if "position" in (kind, first) else None)
            conversations.append([ask(rng, scene, first), ask(rng, scene, kind)])
    return conversations, render_many([turns[0].scene for turns in conversations])


def load(model_dir: str | Path):
    """Model (fp32 for scoring), tokenizer and processor of a saved demo model."""
    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from vlmgate.finetune.demo.batching import speed_up_vision

    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    speed_up_vision(model)
    processor = AutoProcessor.from_pretrained(model_dir)
    return model, processor


def generate_answers(
    model, processor, examples: list[Example] | list[list[Example]], images: np.ndarray, max_new_tokens: int = 8
) -> list[str]:
    """Greedy answers through the processor and chat template (the serving path), one example at a time; for a
    conversation (a list of turns about one image), the answer to its last question, the earlier answers given."""
    import torch
    from PIL import Image

    answers = []
    for item, image in zip(examples, images, strict=True):
        messages = chat_messages(as_turns(item), {"type": "image"})[:-1]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(text=[text], images=[Image.fromarray(image)], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers.append(processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    return answers


def trained_with(model_dir: str | Path):
    """The DemoTrainConfig a model was trained with (its history.json), for the pool its training images came from;
    the defaults for a model without one."""
    from vlmgate.finetune.demo.recipe import DemoTrainConfig

    history = Path(model_dir) / "history.json"
    if not history.is_file():
        return DemoTrainConfig()
    config = json.loads(history.read_text())["config"]
    return DemoTrainConfig(**{k: config[k] for k in ("seed", "pool_size") if k in config})


def evaluate_model(model_dir: str | Path, per_kind: int = 1000, check_generate: int = 20, seed: int = 0) -> dict:
    """Scores per set and kind, plus the generate() cross-check and the training-overlap check."""
    from vlmgate.finetune.demo.batching import PromptEncoder
    from vlmgate.finetune.demo.recipe import evaluate_examples, match_examples, training_scenes

    model, processor = load(model_dir)
    encoder = PromptEncoder(processor.tokenizer, image_tokens=16)
    seen = training_scenes(trained_with(model_dir))
    report: dict = {"per_kind": per_kind, "sets": {}, "overlap_with_training": 0}

    def add_set(name: str, scores: dict[str, float], scenes: list) -> None:
        report["sets"][name] = {**scores, "overall": float(np.mean(list(scores.values())))}
        report["overlap_with_training"] += sum(scene in seen for scene in scenes)

    for name, (style, phrasing) in SETS.items():
        examples, images = heldout_set(per_kind, style=style, phrasing=phrasing, seed=seed)
        add_set(name, evaluate_examples(model, encoder, examples, images), [ex.scene for ex in examples])
        if name == "heldout" and check_generate:
            # Spread the sample over all kinds.
            pick = list(range(0, len(examples), max(1, len(examples) // check_generate)))[:check_generate]
            got = generate_answers(model, processor, [examples[i] for i in pick], images[pick])
            scored = match_examples(model, encoder, [examples[i] for i in pick], images[pick])
            right = [g == examples[i].answer for g, i in zip(got, pick, strict=True)]
            report["generate_check"] = {
                "n": len(pick),
                "exact_match": float(np.mean(right)),
                # How often generate()'s verdict equals the teacher-forced scoring's (should be 1.0).
                "agreement": float(np.mean([a == b for a, b in zip(right, scored, strict=True)])),
                "samples": [
                    {"q": examples[i].question, "expected": examples[i].answer, "got": g}
                    for g, i in zip(got[:5], pick[:5], strict=True)
                ],
            }
    # Follow-up questions, as people chat: a second question about the same image.
    conversations, images = followup_set(per_kind, seed)
    scores = evaluate_examples(model, encoder, conversations, images, last_answer_only=True)
    add_set("followup", scores, [turns[0].scene for turns in conversations])
    return report


def markdown_table(report: dict) -> str:
    """Rows: evaluation sets; columns: question kinds."""
    head = "| set | " + " | ".join(KINDS) + " | overall |\n|---|" + "---|" * (len(KINDS) + 1)
    rows = [
        f"| {name} | " + " | ".join(f"{scores[k]:.3f}" if k in scores else "-" for k in (*KINDS, "overall")) + " |"
        for name, scores in report["sets"].items()
    ]
    return "\n".join([head, *rows])


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", nargs="?", default=str(DEFAULT_MODEL), help="model directory (default: shipped)")
    parser.add_argument("--per-kind", type=int, default=1000, help="examples per question kind and set (default 1000)")
    parser.add_argument("--check-generate", type=int, default=20, help="examples cross-checked with generate()")
    parser.add_argument("--json", help="also write the full report to this JSON file")
    args = parser.parse_args(argv)
    report = evaluate_model(args.model_dir, args.per_kind, args.check_generate)
    print(markdown_table(report))
    print(f"\nscenes shared with the training pool: {report['overlap_with_training']}")
    if "generate_check" in report:
        check = report["generate_check"]
        print(f"generate() on {check['n']} held-out: exact match {check['exact_match']:.3f}, "
              f"agrees with the scoring on {check['agreement']:.3f}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0
