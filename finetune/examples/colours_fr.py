"""Generate the example domain task: answer the colour of the shape in French (the demo base answers in English).

Images are drawn by the demo model's own scene renderer (finetune/demo/shapes.py), so the base can see them; the
new skill is the language of the answer. Orange is left out because its French word is the English one, which the
base would get right for free. Writes TRAIN/EVAL JSONL in vlmgate's format with images as relative paths.

Run as: python -m vlmgate.finetune.examples.colours_fr OUT_DIR [--train 400] [--eval 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

FRENCH = {"red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune", "purple": "violet"}
QUESTIONS = (
    "What colour is the shape? Answer in French.",
    "In French, what color is the object?",
    "Say the colour of the shape in French.",
    "Which colour is this, in French?",
    "De quelle couleur est la forme ?",
    "Quelle est la couleur de l'objet ?",
)


def write_split(out_dir: Path, split: str, n: int, rng: np.random.Generator) -> Path:
    from vlmgate.finetune.demo.shapes import render, sample_scene

    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    colours = list(FRENCH)
    path = out_dir / f"{split}.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            colour = colours[i % len(colours)]  # balanced classes
            scene = sample_scene(rng, count=int(rng.integers(1, 3)), colour=colour)
            name = f"images/{split}-{i:05d}.png"
            render(scene).save(out_dir / name)
            question = QUESTIONS[int(rng.integers(len(QUESTIONS)))]
            record = {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": name}},
                            {"type": "text", "text": question},
                        ],
                    },
                    {"role": "assistant", "content": FRENCH[colour]},
                ]
            }
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def generate(out_dir: str | Path, n_train: int = 400, n_eval: int = 100, seed: int = 0) -> tuple[Path, Path]:
    """Write train.jsonl and eval.jsonl (disjoint random scenes) under out_dir."""
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    return write_split(out, "train", n_train, rng), write_split(out, "eval", n_eval, rng)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="directory for train.jsonl, eval.jsonl and images/")
    parser.add_argument("--train", type=int, default=400, help="training examples (default: 400)")
    parser.add_argument("--eval", type=int, default=100, help="held-out examples (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    train, held_out = generate(args.out_dir, args.train, args.eval, args.seed)
    print(f"wrote {train} ({args.train} examples) and {held_out} ({args.eval} examples)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
