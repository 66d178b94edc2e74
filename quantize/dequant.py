"""Expand an INT4 compressed-tensors (pack-quantized) checkpoint into a dense model directory transformers loads.

Why: transformers cannot run pack-quantized weights on CPU (its compressed-tensors path fails in `_dequantize`),
yet evaluation and the adapter drift check need the quantized model's answers without starting an engine. The
W4A16 kernels compute with exactly `(q - zero_point) * scale` per group, so the dense copy has the weights the
engine multiplies by; only the accumulation order differs.

Format read (compressed-tensors, format "pack-quantized", int4, strategy "group"):
  X.weight_packed      int32 [out, in/8]       eight signed int4 values per int32, offset by 8, along dim 1
  X.weight_scale       float [out, in/group]
  X.weight_zero_point  int32 [out/8, in/group] (asymmetric only) packed the same way along dim 0
  X.weight_shape       int64 [2]               the dense [out, in]

Run as: python -m vlmgate.quantize.dequant INT4_DIR DENSE_OUT_DIR
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vlmgate.quantize.config import quantization_config

_SUFFIXES = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx")


def unpack_int4(packed: torch.Tensor, rows: int, cols: int, packed_dim: int) -> torch.Tensor:
    """Signed int4 values from int32 words (compressed-tensors' layout: low nibble first, stored value + 8)."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    if packed_dim == 1:
        nibbles = (packed.unsqueeze(-1) >> shifts) & 0xF  # [r, c/8, 8]
        values = nibbles.reshape(packed.shape[0], -1)[:, :cols]
    else:
        nibbles = (packed.unsqueeze(1) >> shifts.view(1, -1, 1)) & 0xF  # [r/8, 8, c]
        values = nibbles.reshape(-1, packed.shape[1])[:rows]
    return values.to(torch.int16) - 8


def pack_int4(values: torch.Tensor, packed_dim: int) -> torch.Tensor:
    """Inverse of `unpack_int4` (used by tests to build checkpoints by hand)."""
    if packed_dim == 0:
        return pack_int4(values.T, packed_dim=1).T.contiguous()
    shifted = (values.to(torch.int32) + 8) & 0xF
    rows, cols = shifted.shape
    pad = (-cols) % 8
    if pad:
        shifted = torch.nn.functional.pad(shifted, (0, pad), value=8)
    words = shifted.reshape(rows, -1, 8) << torch.arange(0, 32, 4, dtype=torch.int32)
    # summed in int64 because the top nibble overflows int32; the cast keeps the low 32 bits (two's complement)
    return words.to(torch.int64).sum(dim=-1).to(torch.int32)


def dequantize_linear(tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """Dense weight [out, in] of one pack-quantized linear layer (keys without the module prefix)."""
    rows, cols = (int(v) for v in tensors["weight_shape"].tolist())
    q = unpack_int4(tensors["weight_packed"], rows, cols, packed_dim=1).float()
    scale = tensors["weight_scale"].float()
    group_size = cols // scale.shape[1] if cols % scale.shape[1] == 0 else -(-cols // scale.shape[1])
    if "weight_zero_point" in tensors:
        zero = unpack_int4(tensors["weight_zero_point"], rows, scale.shape[1], packed_dim=0).float()
    else:
        zero = torch.zeros_like(scale)
    expand = lambda t: t.repeat_interleave(group_size, dim=1)[:, :cols]  # noqa: E731
    return ((q - expand(zero)) * expand(scale)).to(dtype)


def dense_state_dict(model_dir: str | Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """All tensors of a pack-quantized checkpoint with every quantized linear expanded to `<name>.weight`."""
    plain: dict[str, torch.Tensor] = {}
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for shard in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                module, _, leaf = key.rpartition(".")
                if leaf in _SUFFIXES:
                    grouped.setdefault(module, {})[leaf] = handle.get_tensor(key)
                else:
                    plain[key] = handle.get_tensor(key)
    for module, tensors in grouped.items():
        if "weight_g_idx" in tensors:
            raise ValueError(f"{module}: activation-ordered (g_idx) checkpoints are not supported by this reader")
        plain[f"{module}.weight"] = dequantize_linear(tensors, dtype)
    return plain


def write_dense_copy(model_dir: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """A plain Hugging Face directory (config without quantization_config) with the dequantized weights."""
    src, out = Path(model_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.is_file() and not item.name.endswith(".safetensors") and item.name != "model.safetensors.index.json":
            shutil.copy2(item, out / item.name)
    config = json.loads((src / "config.json").read_text())
    config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_file(dense_state_dict(src, dtype), str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@contextlib.contextmanager
def dense_copy_if_quantized(model_dir: str | Path, dtype: str = "bfloat16") -> Iterator[Path]:
    """Yields `model_dir` itself for a plain model, else a temporary dense copy (removed afterwards)."""
    config = quantization_config(model_dir)
    if config is None:
        yield Path(model_dir)
        return
    if config.get("format") != "pack-quantized":
        raise ValueError(f"{model_dir}: quantization format {config.get('format')!r} is not pack-quantized")
    with tempfile.TemporaryDirectory(prefix="vlmgate-dense-") as tmp:
        yield write_dense_copy(model_dir, tmp, getattr(torch, dtype))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m vlmgate.quantize.dequant INT4_DIR DENSE_OUT_DIR", file=sys.stderr)
        return 2
    print(f"dense copy written to {write_dense_copy(args[0], args[1])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
