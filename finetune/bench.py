"""Training throughput of QLoRA vs LoRA on the same model and data, in one run (examples per second).

Each method gets the same config apart from `method`, a couple of warm-up steps (not timed), then N timed
optimizer steps. On CPU, QLoRA trades speed for memory (4-bit weights are dequantized in every matmul); the
number to watch on a GPU is the same ratio.

Run as: python -m vlmgate.finetune.bench [--model finetune/demo/vlmgate-demo] [--data train.jsonl] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from PIL import Image

DEMO_MODEL = Path(__file__).resolve().parent / "demo" / "vlmgate-demo"
_COLOURS = {"red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune", "purple": "violet"}


def synthetic_data(out_dir: Path, n: int = 64) -> Path:
    """Plain coloured images with French answers: enough to time training steps, no other dependency."""
    (out_dir / "img").mkdir(parents=True, exist_ok=True)
    path = out_dir / "bench.jsonl"
    with path.open("w") as fh:
        for i in range(n):
            colour = list(_COLOURS)[i % len(_COLOURS)]
            Image.new("RGB", (112, 112), colour).save(out_dir / "img" / f"{i}.png")
            user = [{"type": "image_url", "image_url": {"url": f"img/{i}.png"}}, {"type": "text", "text": "Colour?"}]
            messages = [{"role": "user", "content": user}, {"role": "assistant", "content": _COLOURS[colour]}]
            fh.write(json.dumps({"messages": messages}) + "\n")
    return path


def measure(method: str, model: Path, data: Path, steps: int, warmup: int, batch_size: int, rank: int) -> dict:
    from vlmgate.finetune.config import FinetuneConfig
    from vlmgate.finetune.model import load_processor
    from vlmgate.finetune.train import Trainer, batches_for_step, load_datasets, seed_everything

    cfg = FinetuneConfig(base_model=str(model), train_data=str(data), eval_fraction=0, output_dir="unused",
                         method=method, rank=rank, alpha=2 * rank, batch_size=batch_size, max_steps=steps + warmup,
                         eval_every_steps=0, save_every_steps=0)  # fmt: skip
    processor = load_processor(model)
    data_sets = load_datasets(cfg, processor)
    seed_everything(cfg.seed)
    trainer = Trainer(cfg, data_sets, processor)
    for _ in range(warmup):  # first steps pay for lazy initialisation and image preprocessing (cached after)
        trainer.train_step()
    for step in range(warmup, warmup + steps):  # encode the timed batches up front: time the training only
        for indices in batches_for_step(cfg, len(data_sets.train), step):
            trainer.encoded_batch("train", indices)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    seconds = time.perf_counter() - start
    return {
        "method": method,
        "examples_per_s": steps * batch_size / seconds,
        "s_per_step": seconds / steps,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEMO_MODEL, help="base model dir (default: the demo model)")
    parser.add_argument("--data", type=Path, help="training JSONL (default: 64 synthetic coloured images)")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per method (default: 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per step (default: 8)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank, alpha = 2 x rank (default: 16)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 on a busy box)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if not (args.model / "config.json").is_file():
        parser.error(f"{args.model} is not a model directory; build one with `vlmgate demo build-tiny DIR`")
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or synthetic_data(Path(tmp))
        rows = [measure(m, args.model, data, args.steps, args.warmup, args.batch_size, args.rank)
                for m in ("qlora", "lora")]  # fmt: skip
    import torch

    print(f"\nmodel {args.model.name}, batch {args.batch_size}, rank {args.rank}, {args.steps} timed steps each, "
          f"{torch.get_num_threads()} torch thread(s)")  # fmt: skip
    print("| method | examples/s | s/step | peak RSS (MiB, process) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['examples_per_s']:.2f} | {r['s_per_step']:.3f} | {r['max_rss_mib']:.0f} |")
    print(f"QLoRA / LoRA throughput: {rows[0]['examples_per_s'] / rows[1]['examples_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
