"""Adapter drift check: does a LoRA adapter trained on the bf16 base answer the same on the INT4 base?

Users train adapters on one base and serve them on a 4-bit copy; engines have reported silent quality collapse in
that setting (vLLM issue 42488). `vlmgate quantize check-adapter` measures it: greedy answers of base+adapter
and INT4+adapter on held-out data, their agreement rate and the accuracy of each, written next to the adapter as
`drift_check.json`. The gateway reads that file and applies `evaluate_drift_policy` (warn, or refuse by config).

Answers come from transformers + peft on both bases, the INT4 one dequantized (quantize/dequant.py), not from the
engine: no engine start per base (two would be needed), deterministic, seconds on the demo model, and the dense
weights are exactly the `(q - zero) * scale` values the engine's W4A16 kernel multiplies by.

drift_check.json (schema "vlmgate.drift_check/1"):
  schema, created (ISO time), adapter (path), data (path), examples,
  base {path, fingerprint}            fingerprint = finetune.manifest.model_fingerprint (architecture identity)
  quantized {path, fingerprint, weights_sha256, method}   weights_sha256 identifies the exact INT4 weights
  agreement        fraction of examples where both bases give the same (normalised) answer
  accuracy_bf16, accuracy_int4   exact match against the reference answers
  threshold, passed    the threshold in force when checking, and agreement >= threshold
  engine           how answers were computed
  disagreements    up to 20 {source, reference, bf16, int4}

Run as: vlmgate quantize check-adapter --base BF16 --quantized INT4 --adapter DIR --data HELDOUT.jsonl
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

SCHEMA = "vlmgate.drift_check/1"
FILENAME = "drift_check.json"
DEFAULT_THRESHOLD = 0.9
PolicyMode = Literal["off", "warn", "refuse"]


def weights_sha256(model_dir: str | Path) -> str:
    """Content hash of a checkpoint's safetensors files: identifies one exact set of quantized weights."""
    digest = hashlib.sha256()
    for shard in sorted(Path(model_dir).glob("*.safetensors")):
        with shard.open("rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def _method(model_dir: Path) -> str | None:
    report = model_dir / "quantize_report.json"
    if report.is_file():
        return json.loads(report.read_text()).get("method")
    return None


def check_adapter(
    base: str | Path,
    quantized: str | Path,
    adapter: str | Path,
    data: str | Path,
    threshold: float = DEFAULT_THRESHOLD,
    limit: int | None = None,
) -> dict[str, Any]:
    """Run both bases with the adapter on the held-out data; returns the drift_check.json record."""
    from vlmgate.finetune.evaluate import normalize
    from vlmgate.finetune.manifest import model_fingerprint
    from vlmgate.quantize.evaluate import evaluate, load_data

    base, quantized, adapter = Path(base), Path(quantized), Path(adapter)
    examples = load_data(data, limit)
    on_bf16 = evaluate(base, examples, adapter=adapter)
    on_int4 = evaluate(quantized, examples, adapter=adapter)
    same = [normalize(a) == normalize(b) for a, b in zip(on_bf16.answers, on_int4.answers, strict=True)]
    agreement = sum(same) / len(same)
    disagreements = [
        {"source": f"{Path(e.file).name}:{e.line}", "reference": e.answer, "bf16": a, "int4": b}
        for e, a, b, s in zip(examples, on_bf16.answers, on_int4.answers, same, strict=True)
        if not s
    ][:20]
    return {
        "schema": SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "adapter": str(adapter),
        "data": str(data),
        "examples": len(examples),
        "base": {"path": str(base), "fingerprint": model_fingerprint(base)},
        "quantized": {
            "path": str(quantized),
            "fingerprint": model_fingerprint(quantized),
            "weights_sha256": weights_sha256(quantized),
            "method": _method(quantized),
        },
        "agreement": agreement,
        "accuracy_bf16": on_bf16.accuracy,
        "accuracy_int4": on_int4.accuracy,
        "threshold": threshold,
        "passed": agreement >= threshold,
        "engine": "transformers+peft, INT4 dequantized from the compressed-tensors checkpoint",
        "disagreements": disagreements,
    }


def write_result(result: dict[str, Any], out: str | Path) -> Path:
    """Write to `out` (a directory gets drift_check.json inside)."""
    path = Path(out)
    if path.is_dir():
        path = path / FILENAME
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return path


def read_result(adapter_dir: str | Path) -> dict[str, Any] | None:
    """The adapter's drift_check.json, or None if it has none (a malformed file raises ValueError)."""
    path = Path(adapter_dir) / FILENAME
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    if not isinstance(result, dict) or result.get("schema") != SCHEMA or "agreement" not in result:
        raise ValueError(f"{path}: not a {SCHEMA} record")
    return result


def evaluate_drift_policy(
    result: dict[str, Any] | None,
    threshold: float = DEFAULT_THRESHOLD,
    mode: PolicyMode = "warn",
    served_weights_sha256: str | None = None,
) -> tuple[bool, str]:
    """Decide whether an adapter may be served on an INT4 base. Pure: no I/O.

    Returns (ok, message). `mode` "off" always allows; "warn" always allows but says why it is risky; "refuse"
    blocks an adapter whose agreement is below `threshold`, that has no drift check, or whose check was made on
    other INT4 weights than the ones served (when `served_weights_sha256` is given).
    """
    if mode not in ("off", "warn", "refuse"):
        raise ValueError(f"drift policy mode {mode!r}: expected off, warn or refuse")
    if mode == "off":
        return True, "drift policy off"
    fix = "run: vlmgate quantize check-adapter --base BF16 --quantized INT4 --adapter DIR --data HELDOUT.jsonl"
    if result is None:
        return mode == "warn", f"no drift check recorded for this adapter on the INT4 base; {fix}"
    checked = result.get("quantized", {}).get("weights_sha256")
    if served_weights_sha256 and checked != served_weights_sha256:
        return mode == "warn", f"the drift check was made on other INT4 weights than the served base; {fix}"
    agreement = float(result["agreement"])
    accuracy = (
        f" (accuracy bf16 {result['accuracy_bf16']:.1%}, INT4 {result['accuracy_int4']:.1%})"
        if "accuracy_bf16" in result and "accuracy_int4" in result
        else ""
    )
    if agreement < threshold:
        verdict = "refused" if mode == "refuse" else "served anyway (policy: warn)"
        return mode == "warn", (
            f"adapter answers on the INT4 base agree with bf16 on only {agreement:.1%} of {result.get('examples', '?')}"
            f" held-out examples, below the threshold {threshold:.0%}{accuracy}; {verdict}"
        )
    return True, f"drift check passed: agreement {agreement:.1%} >= {threshold:.0%}{accuracy}"
