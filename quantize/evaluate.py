"""Greedy answers and exact-match accuracy of a base model (bf16 or INT4), optionally with a LoRA adapter.

Runs in vlmgate's own environment and reuses the fine-tuning module's data reader, prompt encoding and greedy
decoding, so a quantized base is scored exactly like an adapter is. An INT4 compressed-tensors checkpoint is first
expanded to dense weights by `quantize.dequant` (the same `(q - zero) * scale` the engine's W4A16 kernel computes),
because transformers cannot run the packed format on CPU. This module also turns calibration records into the
tensors the isolated quantization worker consumes, so both sides see identical inputs.

Run as: python -m vlmgate.quantize.evaluate MODEL_DIR HELDOUT.jsonl [--adapter DIR] [--limit N]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import vlmgate  # noqa: F401  (torchvision import guard before transformers builds a processor)
from vlmgate.finetune.data import DataError, Example, read_jsonl


@dataclass
class EvalResult:
    answers: list[str]
    correct: list[bool]

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct) if self.correct else 0.0


def load_data(path: str | Path, limit: int | None = None) -> list[Example]:
    """Examples of a JSONL file (the fine-tuning format); raises DataError listing every bad line."""
    examples, issues = read_jsonl(path)
    if issues:
        raise DataError(issues)
    return examples[:limit] if limit else examples


def calibration_batches(model_dir: str | Path, examples: list[Example]) -> list[dict]:
    """Whole conversations (answer included: its activations matter too), one batch of one per example."""
    from vlmgate.finetune.collate import encode_example
    from vlmgate.finetune.model import load_processor

    processor = load_processor(model_dir)
    batches = []
    for example in examples:
        encoded = encode_example(example, processor)
        encoded.pop("labels")
        batches.append({k: v.unsqueeze(0) if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v
                        for k, v in encoded.items()})  # fmt: skip
    return batches


def load_model(model_dir: str | Path, adapter: str | Path | None = None):
    """Full-precision transformers model of a plain or INT4 checkpoint (+ PEFT adapter), in eval mode."""
    from vlmgate.finetune.model import load_for_inference
    from vlmgate.quantize.dequant import dense_copy_if_quantized

    with dense_copy_if_quantized(model_dir, "float32") as dense_dir:
        return load_for_inference(dense_dir, adapter)


def evaluate(
    model_dir: str | Path, examples: list[Example], adapter: str | Path | None = None, max_new_tokens: int = 16
) -> EvalResult:
    """Greedy-decode every example and score it against its reference answer (normalised exact match)."""
    from vlmgate.finetune.evaluate import exact_match, generate_answers
    from vlmgate.finetune.model import load_processor

    processor = load_processor(model_dir)
    model = load_model(model_dir, adapter)
    answers = generate_answers(model, processor, examples, max_new_tokens, desc=Path(model_dir).name)
    correct = [bool(exact_match(a, e.answer)) for a, e in zip(answers, examples, strict=True)]
    return EvalResult(answers=answers, correct=correct)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Exact-match accuracy of a (bf16 or INT4) model on held-out JSONL.")
    parser.add_argument("model", help="model directory (plain, or INT4 compressed-tensors)")
    parser.add_argument("data", help="held-out JSONL; each record ends with the reference assistant answer")
    parser.add_argument("--adapter", help="PEFT LoRA adapter directory to apply on top of the model")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N records")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        examples = load_data(args.data, args.limit)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result = evaluate(args.model, examples, adapter=args.adapter)
    print(f"accuracy {result.accuracy:.3f} on {len(examples)} examples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
