"""The adapter manifest (`vlmgate_adapter.json`) and the base-model fingerprint it is checked against.

Every adapter `vlmgate finetune train` exports is a standard PEFT directory plus this manifest. The gateway reads it
to validate an adapter against the base it serves before loading it (rank, targets, base fingerprint), so this
module stays light: pydantic and the standard library only, no torch or transformers.

Run as: python -m vlmgate.finetune.manifest MODEL_DIR_OR_ADAPTER_DIR   (prints a fingerprint or a manifest)
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MANIFEST_FILENAME = "vlmgate_adapter.json"
FORMAT_VERSION = 1
FINGERPRINT_VERSION = 1

# config.json fields that decide whether a language-model LoRA fits a base: the shapes of every targeted layer and
# the function the layers compute (rope). dtype, quantization_config, token ids and generation settings are left
# out on purpose, so a bf16, fp32 or INT4 copy of one base shares its fingerprint.
_ARCH_FIELDS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "rope_parameters",
    "rope_theta",
    "rope_scaling",
    "tie_word_embeddings",
)
# Last name components that are a parameter (plain or quantized storage), not part of a module path.
_PARAM_SUFFIXES = {"weight", "bias"}
_QUANT_PREFIXES = ("weight_", "input_", "output_")


class ManifestError(ValueError):
    """A manifest is missing, unreadable or does not describe a usable adapter."""


class BaseModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the base model's served or directory name, e.g. 'vlmgate-demo'")
    path: str | None = Field(None, description="where the base was read from when training (informative only)")
    fingerprint: str = Field(description="model_fingerprint() of the base; the gateway compares it with its own")


class DataRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    train_digest: str = Field(description="sha256 of the training JSONL and every image it references")
    eval_digest: str | None = Field(None, description="the same for the held-out JSONL, when one was used")
    train_examples: int = Field(ge=0, description="number of training examples")
    eval_examples: int = Field(0, ge=0, description="number of held-out examples")


class AdapterManifest(BaseModel):
    """What the gateway needs to know about an adapter before it loads it, and how it was made."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = Field(FORMAT_VERSION, description="version of this manifest's layout")
    name: str = Field(description="adapter name, used as the model name clients ask for")
    base_model: BaseModelRef
    method: Literal["qlora", "lora"] = Field(description="qlora = 4-bit nf4 base while training; lora = full base")
    rank: int = Field(ge=1, description="LoRA rank r; an engine refuses adapters above its max LoRA rank")
    alpha: float = Field(gt=0, description="LoRA alpha (scaling = alpha / rank)")
    target_modules: list[str] = Field(
        description="full module paths the adapter modifies, e.g. model.language_model.layers.0.self_attn.q_proj"
    )
    vision_tower_lora: bool = Field(
        False, description="opt-in: the adapter also modifies the vision tower (vLLM ignores those weights)"
    )
    data: DataRef | None = None
    metrics: dict[str, float] = Field(default_factory=dict, description="held-out metrics of the adapter and base")
    training: dict[str, object] = Field(default_factory=dict, description="the training settings that produced it")
    library_versions: dict[str, str] = Field(default_factory=dict, description="torch, transformers, peft, ...")
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def lm_only(self) -> bool:
        """True when every target is in the language model (what vLLM applies)."""
        return not any(_is_vision(p.split(".")) for p in self.target_modules)


def compatibility_problems(
    manifest: AdapterManifest, base_fingerprint: str, max_lora_rank: int | None = None
) -> list[str]:
    """Every reason this adapter cannot be served on a base with this fingerprint (empty list: it can)."""
    problems = []
    if manifest.base_model.fingerprint != base_fingerprint:
        problems.append(
            f"adapter {manifest.name!r} was trained on base {manifest.base_model.name!r} with fingerprint "
            f"{manifest.base_model.fingerprint}, the served base has {base_fingerprint}; retrain it on this base"
        )
    if max_lora_rank is not None and manifest.rank > max_lora_rank:
        problems.append(
            f"adapter {manifest.name!r} has rank {manifest.rank} > the engine's max LoRA rank {max_lora_rank}; "
            "retrain with a lower rank or raise --max-lora-rank"
        )
    return problems


def write_manifest(adapter_dir: str | Path, manifest: AdapterManifest) -> Path:
    path = Path(adapter_dir) / MANIFEST_FILENAME
    path.write_text(manifest.model_dump_json(indent=2) + "\n")
    return path


def read_manifest(adapter_dir: str | Path) -> AdapterManifest:
    """Load and validate `vlmgate_adapter.json`; raise ManifestError naming the file, the fields and the fix."""
    path = Path(adapter_dir) / MANIFEST_FILENAME
    if not path.is_file():
        raise ManifestError(
            f"{path}: no adapter manifest. Export adapters with `vlmgate finetune train`, or write one with "
            "vlmgate.finetune.manifest.write_manifest()."
        )
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: not readable JSON ({exc})") from exc
    if isinstance(raw, dict) and raw.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ManifestError(
            f"{path}: format_version {raw['format_version']} is newer than this vlmgate understands "
            f"({FORMAT_VERSION}); upgrade vlmgate."
        )
    try:
        return AdapterManifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise ManifestError(f"{path}: invalid manifest: {problems}") from exc


# ---------------------------------------------------------------------------------------------- fingerprint


def _is_vision(parts: list[str]) -> bool:
    return any(p in ("visual", "vision_tower", "vision_model", "multi_modal_projector") for p in parts)


def lm_module_path(tensor_name: str) -> str | None:
    """Normalise a checkpoint or in-memory tensor name to its language-model module path, or None if not LM.

    Writers disagree on layout (transformers 5 saves `model.layers.*`, holds `model.language_model.layers.*` in
    memory; older writers use `language_model.model.layers.*`), so all map to `layers.N.self_attn.q_proj`, and
    quantized storage (`weight_packed`, `weight_scale`, ...) maps to the module that owns it.
    """
    parts = tensor_name.split(".")
    if _is_vision(parts):
        return None
    if parts[-1] in _PARAM_SUFFIXES or parts[-1].startswith(_QUANT_PREFIXES):
        parts = parts[:-1]
    for prefix in (["model", "language_model"], ["language_model", "model"], ["language_model"], ["model"]):
        if parts[: len(prefix)] == prefix:
            parts = parts[len(prefix) :]
            break
    return ".".join(parts) or None


def _safetensors_names(model_dir: Path) -> list[str]:
    """Tensor names from safetensors headers (8-byte length + JSON), without reading any weights."""
    names: list[str] = []
    for file in sorted(model_dir.glob("*.safetensors")):
        with file.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        names += [k for k in header if k != "__metadata__"]
    return names


def _arch(config: dict) -> dict:
    text = config.get("text_config") or config.get("llm_config") or config
    fields = {k: text[k] for k in _ARCH_FIELDS if k in text}
    fields["architectures"] = config.get("architectures")
    fields["model_type"] = config.get("model_type", fields.get("model_type"))
    return fields


def model_fingerprint(model_dir: str | Path) -> str:
    """A stable, cheap identity of a base model's language model, as far as a LoRA adapter is concerned.

    Covers: the architecture fields of config.json that fix layer shapes and computation (model type,
    architectures, vocab/hidden/intermediate sizes, layers, heads, KV heads, head_dim, activation, rope) and the
    sorted set of language-model module paths found in the safetensors headers (normalised across writers).
    Does not cover: weight values (a fine-tuned copy with the same architecture has the same fingerprint), dtype,
    quantization, the vision tower, tokenizer or generation settings. So equal fingerprints mean "an LM LoRA
    trained on one applies to the other", not "same weights". Reads config.json and a few KB of headers.
    """
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: not a Hugging Face model directory (no config.json)")
    config = json.loads(config_path.read_text())
    modules = sorted({m for n in _safetensors_names(model_dir) if (m := lm_module_path(n))})
    payload = {"v": FINGERPRINT_VERSION, "arch": _arch(config), "modules": modules}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return f"v{FINGERPRINT_VERSION}:{digest[:32]}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    target = Path(args[0])
    if (target / MANIFEST_FILENAME).is_file():
        print(read_manifest(target).model_dump_json(indent=2))
    else:
        print(model_fingerprint(target))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
