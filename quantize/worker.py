"""The quantization job itself, run inside the isolated llm-compressor environment (never in vlmgate's own).

Why a separate script: llm-compressor pins transformers and compressed-tensors versions that conflict with the
engine's (see quantize/env.py), so `vlmgate quantize` runs this file with the isolated interpreter. It imports
only llm-compressor's stack (torch, transformers, llmcompressor) and the standard library; no vlmgate module.
Inputs arrive as one JSON job file plus a torch file of already-tokenised calibration batches (prepared by the
parent in vlmgate's environment, where the model's processor is known to work), so no image or chat-template code
runs here.

Run as (the parent does this): QUANT_ENV/bin/python quantize/worker.py JOB.json
The job file's fields are documented in `quantize.job.WorkerJob`. Progress goes to stderr; the last stdout line is
a JSON summary ({"ok": true, "seconds": ...}).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

# Files of a Hugging Face model directory that describe weights; everything else (tokenizer, processor, chat
# template, generation config) is copied unchanged next to the quantized weights.
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "config.json", "pytorch_model.bin")


def _log(message: str) -> None:
    print(f"[quantize-worker] {message}", file=sys.stderr, flush=True)


def _disable_pinning_without_accelerator() -> None:
    """AWQ pins its activation cache unconditionally; on a machine without an accelerator that raises.

    llm-compressor 0.14 calls `IntermediatesCache.pin_memory` before every AWQ grid search, and pinning needs an
    accelerator ("Cannot access accelerator device when none is available"). Pinning only speeds up host->device
    copies, so on a CPU-only machine it is safely a no-op. On a GPU box nothing is changed.
    """
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if not torch.accelerator.is_available():
        IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None


def _scheme(job: dict):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    weights = QuantizationArgs(
        num_bits=4, type="int", symmetric=job["symmetric"], strategy="group", group_size=job["group_size"]
    )
    return {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}


def build_recipe(job: dict) -> list:
    """The llm-compressor modifiers for one method. All three write the same W4A16 pack-quantized format."""
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    common = {"config_groups": _scheme(job), "ignore": job["ignore"]}
    if job["method"] == "rtn":  # round-to-nearest: data-free, the baseline the other two must beat
        return [QuantizationModifier(**common)]
    if job["method"] == "gptq":
        return [GPTQModifier(**common, dampening_frac=job.get("dampening_frac", 0.01))]
    if job["method"] == "awq":
        from llmcompressor.modifiers.transform.awq import AWQModifier

        # AWQ rescales channels (a transform) and then quantizes; llm-compressor 0.14 splits the two modifiers.
        return [AWQModifier(duo_scaling=True), QuantizationModifier(**common)]
    raise ValueError(f"unknown method {job['method']!r}; expected rtn, gptq or awq")


def _calibration_loader(path: str, device: str):
    import torch

    batches = torch.load(path, weights_only=True)
    _log(f"{len(batches)} calibration samples (image+text) from {path}")
    # batch size 1: samples have different numbers of image patches; llm-compressor accepts a ready DataLoader.
    return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False), len(batches)


def _copy_processor_files(src: Path, dst: Path) -> None:
    for item in src.iterdir():
        if item.is_file() and item.name not in _WEIGHT_FILES and not item.name.endswith(".safetensors"):
            shutil.copy2(item, dst / item.name)


def run(job: dict) -> dict:
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForImageTextToText

    started = time.perf_counter()
    device = job["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    _disable_pinning_without_accelerator()
    torch.manual_seed(job.get("seed", 0))
    _log(f"loading {job['model']} ({job['dtype']}) for {job['method']} on {device}")
    model = AutoModelForImageTextToText.from_pretrained(job["model"], dtype=getattr(torch, job["dtype"]))
    model.eval()
    recipe = build_recipe(job)
    kwargs: dict = {"model": model, "recipe": recipe, "sequential_targets": job["sequential_targets"]}
    if job["method"] != "rtn":
        loader, count = _calibration_loader(job["calibration_tensors"], device)
        # llm-compressor insists on a processor when given data, although ours is tokenised already; the full
        # AutoProcessor would need torchvision (absent here) for its video half, and the tokenizer suffices.
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(job["model"])
        kwargs |= {"dataset": loader, "num_calibration_samples": count, "processor": tokenizer}
    _log(f"running oneshot: {[type(m).__name__ for m in recipe]}, ignore={job['ignore']}")
    oneshot(**kwargs)
    out = Path(job["output"])
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, save_compressed=True)
    _copy_processor_files(Path(job["model"]), out)
    seconds = time.perf_counter() - started
    _log(f"wrote {out} in {seconds:.1f} s")
    import compressed_tensors
    import llmcompressor
    import transformers

    versions = {
        "llmcompressor": llmcompressor.__version__,
        "compressed_tensors": compressed_tensors.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    return {"ok": True, "seconds": round(seconds, 2), "device": device, "versions": versions}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python worker.py JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text())
    summary = run(job)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
