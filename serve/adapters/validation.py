"""Check an adapter directory against the adapter store, the served base and the engine, before loading it.

Engines are poor judges of adapters: vLLM answers 200 while silently ignoring vision-tower weights, and 500 on an
lm_head target, a too-high rank or modules_to_save. So the gateway checks everything itself, reading only
JSON and safetensors headers (no weights, no torch), and reports every problem at once as a 4xx:
- the path is inside the adapter store (no traversal, no symlink leading out);
- adapter_config.json is a LoRA config; adapter_model.safetensors exists and its tensors agree with it;
- rank within the engine's limit; targets the engine can apply (language-model linear layers on vLLM);
- no lm_head / embedding targets, no modules_to_save;
- the base matches: the manifest's fingerprint (when vlmgate trained it) and, always, every LoRA matrix's shape
  against the base module it modifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from vlmgate.finetune.manifest import ManifestError, compatibility_problems, lm_module_path, read_manifest
from vlmgate.serve.engines.base import EngineCapabilities
from vlmgate.serve.errors import InvalidRequestError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_FORBIDDEN_TARGETS = ("lm_head", "embed_tokens", "wte", "word_embeddings")
_VISION_PARTS = ("visual", "vision_tower", "vision_model", "multi_modal_projector", "merger")


class AdapterValidationError(InvalidRequestError):
    """Every problem found with an adapter, in one 400 (or 422-like) error."""

    code = "invalid_adapter"

    def __init__(self, problems: list[str], param: str = "path") -> None:
        self.problems = problems
        super().__init__("Adapter rejected: " + "; ".join(problems), param=param)


@dataclass
class AdapterInfo:
    path: Path
    rank: int
    alpha: float
    target_modules: list[str]
    digest: str
    base_fingerprint: str | None
    manifest_name: str | None


def resolve_in_store(store: Path, requested: str) -> Path:
    """The adapter directory for `requested` (relative to the store, or absolute inside it), or a 400."""
    store = store.resolve()
    candidate = Path(requested)
    candidate = candidate if candidate.is_absolute() else store / candidate
    real = Path(os.path.realpath(candidate))
    if real != store and store not in real.parents:
        raise AdapterValidationError([f"path {requested!r} is outside the adapter store {store}"])
    if not real.is_dir():
        raise AdapterValidationError([f"path {requested!r} is not a directory in the adapter store {store}"])
    for file in real.rglob("*"):
        target = Path(os.path.realpath(file))
        if store not in target.parents:
            raise AdapterValidationError([f"{file.relative_to(real)} is a link leading outside the adapter store"])
    return real


def safetensors_header(path: Path) -> dict[str, dict]:
    """Tensor name -> {dtype, shape, data_offsets}, from the header alone."""
    with path.open("rb") as fh:
        raw_len = fh.read(8)
        if len(raw_len) != 8:
            raise ValueError("file shorter than a safetensors header")
        (length,) = struct.unpack("<Q", raw_len)
        if length > 100 * 1024 * 1024 or length > path.stat().st_size - 8:
            raise ValueError("header length is larger than the file")
        header = json.loads(fh.read(length))
    return {k: v for k, v in header.items() if k != "__metadata__"}


def base_module_shapes(model_dir: Path) -> dict[str, tuple[int, int]]:
    """Language-model module path (as lm_module_path names it) -> (out_features, in_features) of its weight."""
    shapes: dict[str, tuple[int, int]] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        packed = []
        for name, info in safetensors_header(file).items():
            if name.endswith(".weight") and len(info["shape"]) == 2 and (module := lm_module_path(name)):
                shapes[module] = (info["shape"][0], info["shape"][1])
            elif name.endswith(".weight_shape") and lm_module_path(name):
                packed.append(name)
        if packed:  # an INT4 (compressed-tensors) checkpoint: each packed weight stores its dense shape
            from safetensors import safe_open

            with safe_open(str(file), framework="numpy") as handle:
                for name in packed:
                    out_features, in_features = (int(v) for v in handle.get_tensor(name))
                    shapes[lm_module_path(name)] = (out_features, in_features)  # type: ignore[index]
    return shapes


def validate_adapter(
    adapter_dir: Path, capabilities: EngineCapabilities, base_dir: Path | None, base_fingerprint: str | None
) -> AdapterInfo:
    problems: list[str] = []
    config = _read_config(adapter_dir, problems)
    tensors = _read_tensors(adapter_dir, problems)
    if config is None or tensors is None:
        raise AdapterValidationError(problems)
    rank, alpha = config.get("r"), config.get("lora_alpha", config.get("r"))
    if config.get("peft_type", "LORA").upper() != "LORA":
        problems.append(f"peft_type {config.get('peft_type')!r} is not LORA")
    if not isinstance(rank, int) or rank < 1:
        problems.append(f"adapter_config.json: 'r' must be a positive integer, got {rank!r}")
        rank = 0
    elif rank > capabilities.max_lora_rank:
        problems.append(f"rank {rank} exceeds the engine's max LoRA rank {capabilities.max_lora_rank}")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save {config['modules_to_save']} is not supported by the engine; retrain without")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    modules = sorted({n.split(".lora_")[0] for n in tensors if ".lora_" in n})
    if not modules:
        problems.append(f"{ADAPTER_WEIGHTS} holds no LoRA tensors (lora_A / lora_B)")
    problems += _target_problems(targets, modules, capabilities)
    problems += _shape_problems(tensors, rank, base_module_shapes(base_dir) if base_dir else None)
    manifest_name, fingerprint = None, None
    try:
        manifest = read_manifest(adapter_dir)
    except ManifestError as exc:
        if (adapter_dir / "vlmgate_adapter.json").exists():  # present but broken: say so; absent is fine
            problems.append(str(exc))
    else:
        manifest_name, fingerprint = manifest.name, manifest.base_model.fingerprint
        if base_fingerprint:
            problems += compatibility_problems(manifest, base_fingerprint, capabilities.max_lora_rank)
    if problems:
        raise AdapterValidationError(list(dict.fromkeys(problems)))
    return AdapterInfo(adapter_dir, rank, float(alpha), modules, _digest(adapter_dir), fingerprint, manifest_name)


def _read_config(adapter_dir: Path, problems: list[str]) -> dict | None:
    path = adapter_dir / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        problems.append(f"{ADAPTER_CONFIG} is missing: not a PEFT adapter directory")
        return None
    except (OSError, json.JSONDecodeError) as exc:
        problems.append(f"{ADAPTER_CONFIG} is not readable JSON ({exc})")
        return None
    if not isinstance(config, dict):
        problems.append(f"{ADAPTER_CONFIG} must be a JSON object")
        return None
    return config


def _read_tensors(adapter_dir: Path, problems: list[str]) -> dict[str, dict] | None:
    path = adapter_dir / ADAPTER_WEIGHTS
    if not path.is_file():
        has_bin = (adapter_dir / "adapter_model.bin").exists()
        alt = " (only adapter_model.bin found: convert it to safetensors)" if has_bin else ""
        problems.append(f"{ADAPTER_WEIGHTS} is missing{alt}")
        return None
    try:
        return safetensors_header(path)
    except (OSError, ValueError, json.JSONDecodeError, struct.error) as exc:
        problems.append(f"{ADAPTER_WEIGHTS} is not a readable safetensors file ({exc})")
        return None


def _target_problems(targets: list[str], modules: list[str], caps: EngineCapabilities) -> list[str]:
    problems = []
    suffixes = {m.rsplit(".", 1)[-1] for m in modules} | {t.rsplit(".", 1)[-1] for t in targets}
    forbidden = sorted(s for s in suffixes if s in _FORBIDDEN_TARGETS)
    if forbidden:
        problems.append(f"targets {forbidden} (output/embedding layers) are not supported by the engine")
    vision = [m for m in modules if any(p in m.split(".") for p in _VISION_PARTS)]
    if vision and not caps.vision_lora:
        problems.append(
            f"{len(vision)} LoRA modules are in the vision tower (e.g. {vision[0]}); this engine applies LoRA to the "
            "language model only and would silently ignore them. Retrain with language-model targets only"
        )
    if caps.lora_target_modules:
        unknown = sorted(suffixes - set(caps.lora_target_modules) - set(_FORBIDDEN_TARGETS))
        if unknown:
            problems.append(
                f"target modules {unknown} cannot be applied by the engine "
                f"(supported: {', '.join(sorted(caps.lora_target_modules))})"
            )
    return problems


def _shape_problems(tensors: dict[str, dict], rank: int, base: dict[str, tuple[int, int]] | None) -> list[str]:
    problems = []
    for name, info in tensors.items():
        shape = info.get("shape", [])
        if ".lora_A." in name or ".lora_B." in name:
            if len(shape) != 2:
                problems.append(f"tensor {name} has shape {shape}, expected a matrix")
                continue
            is_a = ".lora_A." in name
            if rank and (shape[0] if is_a else shape[1]) != rank:
                problems.append(f"tensor {name} has shape {shape}, inconsistent with rank r={rank}")
            module = lm_module_path(name.split(".lora_")[0].removeprefix("base_model.model."))
            if base is not None and module is not None:
                if module not in base:
                    problems.append(f"tensor {name} targets {module}, which the served base does not have")
                elif (shape[1] if is_a else shape[0]) != base[module][1 if is_a else 0]:
                    problems.append(
                        f"tensor {name} has shape {shape} but the base's {module} is {list(base[module])}: "
                        "the adapter was trained on a different base"
                    )
    return problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else [])


def _digest(adapter_dir: Path) -> str:
    sha = hashlib.sha256()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        with (adapter_dir / name).open("rb") as fh:
            while chunk := fh.read(1 << 20):
                sha.update(chunk)
    return "sha256:" + sha.hexdigest()
