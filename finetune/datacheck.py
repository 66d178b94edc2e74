"""Dataset health beyond per-line validity: near-duplicate images, train/eval leakage, and statistics.

Near-duplicates use a perceptual hash per colour channel (imagehash.phash, 3 x 64 bits): two images within
`hash_distance` bits look the same to a person even if their bytes differ (re-encoded, resized). Leakage = a
held-out example whose question and image (near-duplicate) both appear in training: it measures memory, not skill.

Run as: vlmgate finetune check DATA.jsonl [--eval HELDOUT.jsonl] [--model DIR]
"""

from __future__ import annotations

import io
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vlmgate.finetune.data import DataIssue, Example, length_issues, read_jsonl


def colour_phash(image_bytes: bytes) -> tuple[int, int, int]:
    """64-bit perceptual hash of each RGB channel: a grey-level phash alone calls a red and a blue square equal."""
    import imagehash

    with Image.open(io.BytesIO(image_bytes)) as img:
        channels = img.convert("RGB").split()
    return tuple(int("".join("1" if b else "0" for b in imagehash.phash(c).hash.flatten()), 2) for c in channels)


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise bit distances between two arrays of (n, 3) uint64 channel hashes, summed over channels."""
    x = np.bitwise_xor(a[:, None, :], b[None, :, :])
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(axis=(-1, -2))


def _hashes(examples: list[Example]) -> tuple[np.ndarray, list[int]]:
    """One (3,) hash per image, and the example index each belongs to."""
    values, owners = [], []
    for i, ex in enumerate(examples):
        for image in ex.images:
            values.append(colour_phash(image))
            owners.append(i)
    return np.array(values, dtype=np.uint64).reshape(-1, 3), owners


def near_duplicates(examples: list[Example], max_distance: int) -> list[tuple[Example, Example, int]]:
    """Pairs of distinct examples whose images are within max_distance bits."""
    hashes, owners = _hashes(examples)
    if len(hashes) < 2:
        return []
    dist = _hamming(hashes, hashes)
    pairs = []
    for i, j in zip(*np.nonzero(np.triu(dist <= max_distance, k=1)), strict=True):
        if owners[i] != owners[j]:
            pairs.append((examples[owners[i]], examples[owners[j]], int(dist[i, j])))
    return pairs


def leakage(train: list[Example], held_out: list[Example], max_distance: int) -> list[tuple[Example, Example]]:
    """Held-out examples with the same question as a training example and near-duplicate images (or none)."""

    def hashed(examples: list[Example]) -> list[np.ndarray]:
        return [np.array([colour_phash(b) for b in ex.images], dtype=np.uint64).reshape(-1, 3) for ex in examples]

    train_hashes, eval_hashes = hashed(train), hashed(held_out)  # each image hashed once
    by_prompt: dict[str, list[int]] = {}
    for i, ex in enumerate(train):
        by_prompt.setdefault(ex.prompt_text.strip().lower(), []).append(i)
    leaks = []
    for j, ex in enumerate(held_out):
        for i in by_prompt.get(ex.prompt_text.strip().lower(), []):
            a, b = eval_hashes[j], train_hashes[i]
            if len(a) == len(b) and (not len(a) or (np.diag(_hamming(a, b)) <= max_distance).all()):
                leaks.append((ex, train[i]))
                break
    return leaks


def statistics_of(examples: list[Example], lengths: list[int] | None = None) -> dict[str, object]:
    answers = Counter(ex.answer for ex in examples)
    images = [len(ex.images) for ex in examples]
    sizes = Counter()
    for ex in examples:
        for image in ex.images:
            with Image.open(io.BytesIO(image)) as img:
                sizes[f"{img.width}x{img.height}"] += 1
    stats: dict[str, object] = {
        "examples": len(examples),
        "images": sum(images),
        "images_per_example": f"{min(images, default=0)}-{max(images, default=0)}",
        "turns_per_example": f"{min((len(e.messages) for e in examples), default=0)}-"
        f"{max((len(e.messages) for e in examples), default=0)}",
        "answer_words_mean": round(statistics.fmean(len(e.answer.split()) for e in examples), 2) if examples else 0,
        "distinct_answers": len(answers),
        "top_answers": ", ".join(f"{a!r} x{n}" for a, n in answers.most_common(8)),
        "image_sizes": ", ".join(f"{s} x{n}" for s, n in sizes.most_common(4)),
    }
    if lengths:
        stats["tokens_min_mean_max"] = f"{min(lengths)} / {statistics.fmean(lengths):.0f} / {max(lengths)}"
    return stats


@dataclass
class CheckReport:
    issues: list[DataIssue] = field(default_factory=list)
    duplicates: list[tuple[Example, Example, int]] = field(default_factory=list)
    leaks: list[tuple[Example, Example]] = field(default_factory=list)
    stats: dict[str, dict[str, object]] = field(default_factory=dict)

    def render(self, limit: int = 20) -> str:
        lines = []
        if self.issues:
            lines.append(f"ERRORS: {len(self.issues)} problem(s); training refuses this data until they are fixed:")
            lines += [f"  {issue}" for issue in self.issues]
        else:
            lines.append("OK: every line is valid")
        if self.duplicates:
            lines.append(f"WARNING: {len(self.duplicates)} near-duplicate image pair(s) (perceptual hash):")
            lines += [f"  {a.file}:{a.line} ~ {b.file}:{b.line} ({d} bits)" for a, b, d in self.duplicates[:limit]]
        if self.leaks:
            lines.append(f"WARNING: {len(self.leaks)} held-out example(s) also in training (same question + image):")
            lines += [f"  {a.file}:{a.line} = {b.file}:{b.line}" for a, b in self.leaks[:limit]]
        for split, stats in self.stats.items():
            lines.append(f"{split}:")
            lines += [f"  {k:<22} {v}" for k, v in stats.items()]
        return "\n".join(lines)


def check_files(
    data: str | Path,
    eval_data: str | Path | None = None,
    model_dir: str | Path | None = None,
    max_length: int = 2048,
    hash_distance: int = 6,
) -> CheckReport:
    """Everything `vlmgate finetune check` reports, for one training file and an optional held-out file."""
    report = CheckReport()
    processor = None
    if model_dir is not None:
        from vlmgate.finetune.model import load_processor

        processor = load_processor(model_dir)
    splits = {"train": data} | ({"eval": eval_data} if eval_data else {})
    loaded: dict[str, list[Example]] = {}
    for split, path in splits.items():
        examples, issues = read_jsonl(path)
        lengths = None
        if processor is not None and examples:
            from vlmgate.finetune.data import token_lengths

            lengths = token_lengths(examples, processor)
            issues += length_issues(examples, lengths, max_length)
        report.issues += sorted(issues, key=lambda i: (i.file, i.line))
        report.duplicates += near_duplicates(examples, hash_distance)
        report.stats[f"{split} ({path})"] = statistics_of(examples, lengths)
        loaded[split] = examples
    if "eval" in loaded:
        report.leaks = leakage(loaded["train"], loaded["eval"], hash_distance)
    return report
