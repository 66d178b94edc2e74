"""One quantization run end to end: validate, prepare calibration inputs, run the isolated worker, measure, report.

The parent (this module, vlmgate's environment) does everything that needs the model's processor or vlmgate's
code: reading and tokenising the calibration JSONL, sizes, held-out accuracy of bf16 vs INT4. The isolated
environment (quantize/env.py) runs only quantize/worker.py, which needs nothing but llm-compressor's stack.

Run as: vlmgate quantize --model DIR --method awq --output OUT --calibration DATA.jsonl [--heldout HELD.jsonl]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlmgate.quantize.config import QuantizeConfig
from vlmgate.quantize.env import ensure_env
from vlmgate.quantize.report import write_report
from vlmgate.quantize.sizes import sizes_as_dict, weight_sizes

WORKER = Path(__file__).with_name("worker.py")


class QuantizeError(RuntimeError):
    """A run could not complete; the message says which step and why."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def worker_job(cfg: QuantizeConfig, calibration_tensors: Path | None, count: int) -> dict[str, Any]:
    """The JSON the worker reads (see quantize/worker.py); plain types only, it crosses environments."""
    return {
        "model": str(cfg.model.resolve()),
        "output": str(cfg.output.resolve()),
        "method": cfg.method,
        "group_size": cfg.group_size,
        "symmetric": cfg.symmetric,
        "ignore": cfg.ignore,
        "sequential_targets": cfg.sequential_targets(),
        "calibration_tensors": str(calibration_tensors) if calibration_tensors else None,
        "calibration_samples": count,
        "device": cfg.device,
        "dtype": cfg.dtype,
    }


def default_calibration(workdir: Path, count: int, say: Callable[[str], None]) -> Path:
    """The demo dataset (training distribution, generated on the fly) when no --calibration file is given."""
    try:
        from vlmgate.finetune.demo.data import write_jsonl
    except ImportError as exc:
        raise QuantizeError(f"no --calibration given and the demo data generator is unavailable ({exc})") from exc
    say(f"no --calibration given: generating {count} records of the demo dataset as calibration data")
    return write_jsonl(workdir / "calibration", count, seed=0, inline=True, name="calibration.jsonl")


def run_worker(python: Path, job: dict[str, Any], workdir: Path, say: Callable[[str], None] = _say) -> dict:
    """Run the worker in the isolated interpreter; its log streams through, its last stdout line is the summary."""
    job_file = workdir / "job.json"
    job_file.write_text(json.dumps(job, indent=2))
    # PYTHONPATH cleared: nothing from vlmgate's environment may leak into the isolated one.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env |= {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.run(
        [str(python), str(WORKER), str(job_file)], stdout=subprocess.PIPE, stderr=None, text=True, env=env
    )
    lines = [line for line in process.stdout.splitlines() if line.strip()]
    if process.returncode != 0 or not lines:
        raise QuantizeError(f"the quantization worker failed (exit {process.returncode}); its log is above")
    return json.loads(lines[-1])


def _evaluate(cfg: QuantizeConfig, say: Callable[[str], None]) -> dict[str, Any] | None:
    if cfg.heldout is None:
        return None
    from vlmgate.quantize.evaluate import evaluate, load_data

    examples = load_data(cfg.heldout, cfg.heldout_limit)
    say(f"scoring bf16 and INT4 on {len(examples)} held-out examples ...")
    reference = evaluate(cfg.model, examples)
    quantized = evaluate(cfg.output, examples)
    same = sum(a == b for a, b in zip(reference.answers, quantized.answers, strict=True)) / len(examples)
    return {
        "examples": len(examples),
        "data": str(cfg.heldout),
        "bf16": reference.accuracy,
        "int4": quantized.accuracy,
        "delta_points": round(100 * (quantized.accuracy - reference.accuracy), 2),
        "answer_agreement": same,
    }


def quantize(cfg: QuantizeConfig, say: Callable[[str], None] = _say) -> dict[str, Any]:
    """Run the whole job; returns the report (also written as JSON + Markdown)."""
    problems = cfg.problems()
    if problems:
        raise QuantizeError("cannot start:\n  " + "\n  ".join(problems))
    started = time.perf_counter()
    python = ensure_env(cfg.env_dir, say)
    env_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="vlmgate-quantize-") as tmp:
        workdir, tensors, count = Path(tmp), None, 0
        t0 = time.perf_counter()
        if cfg.method != "rtn":
            import torch

            from vlmgate.quantize.evaluate import calibration_batches, load_data

            calibration = cfg.calibration or default_calibration(workdir, cfg.calibration_samples, say)
            examples = load_data(calibration, cfg.calibration_samples)
            batches = calibration_batches(cfg.model, examples)
            tensors, count = workdir / "calibration.pt", len(batches)
            torch.save(batches, tensors)
            say(f"calibration: {count} image+text samples from {calibration}")
        prepare_seconds = time.perf_counter() - t0
        if cfg.overwrite and cfg.output.exists():
            import shutil

            shutil.rmtree(cfg.output)
        t0 = time.perf_counter()
        summary = run_worker(python, worker_job(cfg, tensors, count), workdir, say)
        quantize_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    accuracy = _evaluate(cfg, say)
    evaluate_seconds = time.perf_counter() - t0
    report = {
        "method": cfg.method,
        "model": str(cfg.model),
        "output": str(cfg.output),
        "settings": {
            "group_size": cfg.group_size,
            "symmetric": cfg.symmetric,
            "ignore": cfg.ignore,
            "calibration": str(cfg.calibration) if cfg.calibration else "generated demo dataset (seed 0)",
            "calibration_samples": count,
            "dtype": cfg.dtype,
            "device": summary.get("device", cfg.device),
            "format": "compressed-tensors pack-quantized W4A16",
        },
        "versions": summary.get("versions", {}),
        "seconds": {
            "env": round(env_seconds, 2),
            "prepare": round(prepare_seconds, 2),
            "quantize": round(quantize_seconds, 2),
            "evaluate": round(evaluate_seconds, 2),
            "total": round(time.perf_counter() - started, 2),
        },
        "sizes": sizes_as_dict(weight_sizes(cfg.output)),
        "accuracy": accuracy,
    }
    json_path, md_path = write_report(report, cfg.report_dir or cfg.output)
    say(f"report: {json_path} and {md_path}")
    return report
