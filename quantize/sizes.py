"""Weight sizes of a checkpoint, split into language-model blocks, other LM weights and the vision tower.

Each tensor counts twice: its actual bytes on disk, and what it would take in bf16 (packed int4 weights count as
their dense shape x 2 bytes; scales, zero points and shapes exist only in the quantized form and count 0 in bf16).
So one INT4 checkpoint yields both sides of "quantized vs bf16", and a plain checkpoint's bf16 figure is the same
number computed from the original (a test holds the two equal).

Run as: python -m vlmgate.quantize.sizes MODEL_DIR
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from safetensors import safe_open

# name fragments of vision-tower / projector weights across common VLM architectures
_VISION = ("visual.", "vision_tower.", "vision_model.", "multi_modal_projector.")
_QUANT_ONLY = ("weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx")
_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass
class PartSize:
    bytes: int = 0  # as stored in this checkpoint
    bf16_bytes: int = 0  # the same weights held in bf16

    @property
    def ratio(self) -> float:
        return self.bytes / self.bf16_bytes if self.bf16_bytes else math.nan


def part_of(name: str) -> str:
    """'vision', 'lm_blocks' (the transformer layers W4A16 targets) or 'lm_other' (embeddings, lm_head, norm)."""
    if any(fragment in name for fragment in _VISION):
        return "vision"
    return "lm_blocks" if ".layers." in name else "lm_other"


def weight_sizes(model_dir: str | Path) -> dict[str, PartSize]:
    """Sizes per part plus 'lm' (blocks + other) and 'total', read from safetensors headers only."""
    parts = {name: PartSize() for name in ("lm_blocks", "lm_other", "vision")}
    shards = sorted(Path(model_dir).glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights")
    for shard in shards:
        with safe_open(str(shard), framework="pt") as handle:
            shapes = {key: handle.get_slice(key) for key in handle.keys()}  # noqa: SIM118 (not a mapping)
            for key, tensor_slice in shapes.items():
                shape, dtype = tensor_slice.get_shape(), tensor_slice.get_dtype()
                stored = math.prod(shape) * _BYTES[dtype]
                leaf = key.rpartition(".")[2]
                if leaf == "weight_packed":
                    dense_shape = handle.get_tensor(key.replace("weight_packed", "weight_shape")).tolist()
                    bf16 = math.prod(dense_shape) * 2
                elif leaf in _QUANT_ONLY:
                    bf16 = 0
                else:
                    bf16 = math.prod(shape) * 2 if dtype in ("BF16", "F16", "F32", "F64") else stored
                part = parts[part_of(key)]
                part.bytes += stored
                part.bf16_bytes += bf16
    lm = PartSize(parts["lm_blocks"].bytes + parts["lm_other"].bytes,
                  parts["lm_blocks"].bf16_bytes + parts["lm_other"].bf16_bytes)  # fmt: skip
    total = PartSize(lm.bytes + parts["vision"].bytes, lm.bf16_bytes + parts["vision"].bf16_bytes)
    return {**parts, "lm": lm, "total": total}


def sizes_as_dict(sizes: dict[str, PartSize]) -> dict[str, dict]:
    return {name: {**asdict(size), "ratio": round(size.ratio, 4)} for name, size in sizes.items()}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m vlmgate.quantize.sizes MODEL_DIR", file=sys.stderr)
        return 2
    print(json.dumps(sizes_as_dict(weight_sizes(args[0])), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
