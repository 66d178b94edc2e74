"""Compare a base model and its adapter on held-out data: greedy answers, exact match and token F1, as a table.

Both are evaluated on the full-precision base, which is what an engine serves (a QLoRA adapter is trained against
a 4-bit base but served on the original weights). Base answers come from the same model with the adapter disabled.

Run as: vlmgate finetune eval --base MODEL_DIR --adapter ADAPTER_DIR --data HELDOUT.jsonl [--out DIR]
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import vlmgate  # noqa: F401  (torchvision guard first)

import torch  # isort: skip
from tqdm import tqdm  # isort: skip

from vlmgate.finetune.collate import encode_prompt
from vlmgate.finetune.data import Example

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: 'Rouge.' and 'rouge' are the same answer."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token-overlap F1 on normalised words; credits partly right free-text answers."""
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@torch.no_grad()
def generate_answers(model, processor, examples: list[Example], max_new_tokens: int, desc: str = "") -> list[str]:
    """Greedy answers, one example at a time (no padding effects, so they match an engine's greedy output)."""
    answers = []
    for example in tqdm(examples, desc=desc or "generating", unit="ex", leave=False):
        inputs = {k: v.to(model.device) for k, v in encode_prompt(example, processor).items()}
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1] :]
        answers.append(processor.tokenizer.decode(new, skip_special_tokens=True).strip())
    return answers


@dataclass
class EvalReport:
    examples: int
    metrics: dict[str, float]
    rows: list[dict] = field(default_factory=list)

    def markdown(self) -> str:
        m = self.metrics
        lines = [
            "| model | exact match | token F1 | held-out examples |",
            "|---|---|---|---|",
            f"| base | {m['base_exact_match']:.1%} | {m['base_token_f1']:.3f} | {self.examples} |",
            f"| base + adapter | {m['adapter_exact_match']:.1%} | {m['adapter_token_f1']:.3f} | {self.examples} |",
        ]
        return "\n".join(lines)

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n")
        (out / "eval.md").write_text(self.markdown() + "\n")
        return out / "eval.json", out / "eval.md"


def score(examples: list[Example], base: list[str], adapted: list[str]) -> EvalReport:
    rows, totals = [], Counter()
    for ex, b, a in zip(examples, base, adapted, strict=True):
        row = {
            "source": f"{Path(ex.file).name}:{ex.line}",
            "question": ex.prompt_text,
            "reference": ex.answer,
            "base": b,
            "adapter": a,
        }
        for who, pred in (("base", b), ("adapter", a)):
            totals[f"{who}_exact_match"] += exact_match(pred, ex.answer)
            totals[f"{who}_token_f1"] += token_f1(pred, ex.answer)
        rows.append(row)
    n = max(1, len(examples))
    keys = ("base_exact_match", "base_token_f1", "adapter_exact_match", "adapter_token_f1")
    return EvalReport(len(examples), {k: totals[k] / n for k in keys}, rows)


def evaluate(
    base_model: str | Path, adapter_dir: str | Path, examples: list[Example], max_new_tokens: int = 32
) -> EvalReport:
    """Greedy answers of base and base+adapter on `examples`, scored against the references."""
    from vlmgate.finetune.model import load_for_inference, load_processor

    processor = load_processor(base_model)
    model = load_for_inference(base_model, adapter_dir)
    adapted = generate_answers(model, processor, examples, max_new_tokens, "adapter")
    with model.disable_adapter():
        base = generate_answers(model, processor, examples, max_new_tokens, "base")
    return score(examples, base, adapted)
