"""Write the demo dataset in the project's one JSONL format (the shape of the chat API it serves).

Run as: vlmgate demo generate OUT_DIR [--n 1000] [--seed 0] [--style train|ood] [--phrasing train|unseen]
        [--inline] [--kinds colour,count]

Each line is `{"messages": [...]}` in OpenAI chat form: one user turn whose content holds an `image_url` part
(a PNG, as a path relative to the JSONL file or with --inline a data URL) and a text part with the question,
then the assistant's answer, last. `vlmgate finetune` reads the same format. Same arguments, same bytes.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vlmgate.finetune.demo.questions import KINDS, Example, sample_example
from vlmgate.finetune.demo.shapes import render

DATA_SEED = 2_000_003  # generated files never share a stream with training or evaluation


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def data_url(image) -> str:
    """A PIL image as an inline `data:image/png;base64,...` URL."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def chat_messages(turns: list[Example], image_part: dict) -> list[dict]:
    """A conversation about one image as OpenAI chat messages, each question followed by its answer: the image part
    in the first user turn (before or after the question, as the example says), follow-up questions as text only
    (how the recipe trains them, and how a chat client sends them)."""
    messages = []
    for i, example in enumerate(turns):
        content: str | list[dict] = example.question
        if i == 0:
            text_part = {"type": "text", "text": example.question}
            content = [image_part, text_part] if example.image_first else [text_part, image_part]
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": example.answer}]
    return messages


def record(example: Example, image_url: str) -> dict:
    """One JSONL record: the user turn (image + question, in the example's order) and the assistant's answer."""
    return {"messages": chat_messages([example], {"type": "image_url", "image_url": {"url": image_url}})}


def write_jsonl(
    out_dir: str | Path,
    n: int,
    *,
    seed: int = 0,
    style: str = "train",
    phrasing: str = "train",
    inline: bool = False,
    kinds: tuple[str, ...] = KINDS,
    name: str = "data.jsonl",
) -> Path:
    """Write n examples (kinds in turn) to OUT_DIR/name, images under OUT_DIR/images/ unless inline."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown question kinds {unknown}; choose from {list(KINDS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not inline:
        (out / "images").mkdir(exist_ok=True)
    rng = np.random.default_rng([DATA_SEED, seed])
    path = out / name
    with path.open("w") as f:
        for i in tqdm(range(n), desc=f"writing {path.name}", leave=False):
            example = sample_example(rng, kinds[i % len(kinds)], style=style, phrasing=phrasing)
            image = render(example.scene)
            if inline:
                url = data_url(image)
            else:
                url = f"images/{Path(name).stem}-{i:06d}.png"
                (out / url).write_bytes(png_bytes(image))
            f.write(json.dumps(record(example, url)) + "\n")
    return path


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="directory for data.jsonl (and images/ unless --inline)")
    parser.add_argument("--n", type=int, default=1000, help="number of examples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--style", choices=["train", "ood"], default="train", help="image style (default train)")
    parser.add_argument("--phrasing", choices=["train", "unseen"], default="train", help="question wordings")
    parser.add_argument("--inline", action="store_true", help="embed images as data URLs instead of PNG files")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    parser.add_argument("--name", default="data.jsonl", help="JSONL file name (default data.jsonl)")
    args = parser.parse_args(argv)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    try:
        path = write_jsonl(
            args.out_dir, args.n, seed=args.seed, style=args.style, phrasing=args.phrasing, inline=args.inline,
            kinds=kinds, name=args.name,
        )  # fmt: skip
    except ValueError as err:
        parser.error(str(err))
    answers = Counter(json.loads(line)["messages"][-1]["content"] for line in path.open())
    print(f"wrote {args.n} examples to {path} ({len(answers)} distinct answers)")
    return 0
