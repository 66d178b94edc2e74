"""INT4 pack-quantized -> dense: bit layout agrees with compressed-tensors, and dequantized weights are exact."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import vlmgate  # noqa: F401  (torchvision guard: compressed_tensors imports transformers)
from vlmgate.quantize.dequant import (
    dense_copy_if_quantized,
    dense_state_dict,
    dequantize_linear,
    pack_int4,
    unpack_int4,
)


@pytest.mark.parametrize("packed_dim", [0, 1])
def test_packing_matches_compressed_tensors(packed_dim: int) -> None:
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    values = torch.randint(-8, 8, (16, 40), generator=torch.Generator().manual_seed(packed_dim), dtype=torch.int8)
    reference = pack_to_int32(values, 4, packed_dim=packed_dim)
    assert torch.equal(pack_int4(values, packed_dim), reference)
    assert torch.equal(unpack_int4(reference, 16, 40, packed_dim).to(torch.int8), values)


def _quantize_asym(weight: torch.Tensor, group: int) -> dict[str, torch.Tensor]:
    """Reference asymmetric int4 group quantization, stored the way compressed-tensors stores it."""
    rows, cols = weight.shape
    grouped = weight.reshape(rows, cols // group, group)
    low, high = grouped.amin(-1).clamp(max=0), grouped.amax(-1).clamp(min=0)
    scale = ((high - low) / 15).clamp(min=1e-8)
    zero = (-8 - torch.round(low / scale)).clamp(-8, 7)
    q = torch.clamp(torch.round(grouped / scale.unsqueeze(-1)) + zero.unsqueeze(-1), -8, 7).reshape(rows, cols)
    return {
        "weight_packed": pack_int4(q.to(torch.int8), 1),
        "weight_scale": scale,
        "weight_zero_point": pack_int4(zero.to(torch.int8), 0),
        "weight_shape": torch.tensor([rows, cols]),
        "expected": (q.reshape(rows, cols // group, group) - zero.unsqueeze(-1)) * scale.unsqueeze(-1),
    }


def test_dequantized_weight_is_q_minus_zero_times_scale_and_close_to_original() -> None:
    weight = torch.randn(24, 64, generator=torch.Generator().manual_seed(0))
    stored = _quantize_asym(weight, group=16)
    expected = stored.pop("expected").reshape(24, 64)
    dense = dequantize_linear(stored, torch.float32)
    assert torch.allclose(dense, expected, atol=1e-6)
    # round-to-nearest error is at most half a step per weight
    step = stored["weight_scale"].repeat_interleave(16, dim=1)
    assert bool(((dense - weight).abs() <= step / 2 + 1e-5).all())


def test_dense_copy_replaces_packed_tensors_and_drops_quantization_config(tmp_path) -> None:
    weight = torch.randn(8, 32, generator=torch.Generator().manual_seed(1))
    stored = _quantize_asym(weight, group=16)
    expected = stored.pop("expected").reshape(8, 32)
    tensors = {f"model.layers.0.mlp.up_proj.{k}": v for k, v in stored.items()}
    tensors["model.norm.weight"] = torch.ones(8)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    config = {"model_type": "qwen2_vl", "quantization_config": {"format": "pack-quantized"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "tokenizer.json").write_text("{}")

    assert set(dense_state_dict(tmp_path, torch.float32)) == {"model.layers.0.mlp.up_proj.weight", "model.norm.weight"}
    with dense_copy_if_quantized(tmp_path, "float32") as dense_dir:
        assert dense_dir != tmp_path
        assert "quantization_config" not in json.loads((dense_dir / "config.json").read_text())
        assert (dense_dir / "tokenizer.json").is_file()
        dense = load_file(str(dense_dir / "model.safetensors"))
        assert torch.allclose(dense["model.layers.0.mlp.up_proj.weight"], expected, atol=1e-6)
    assert not dense_dir.exists()  # temporary copy removed


def test_plain_model_is_used_in_place(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    with dense_copy_if_quantized(tmp_path) as dense_dir:
        assert dense_dir == tmp_path


def test_other_quantization_formats_are_refused(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"format": "marlin-24"}}))
    with pytest.raises(ValueError, match="not pack-quantized"), dense_copy_if_quantized(tmp_path):
        pass
