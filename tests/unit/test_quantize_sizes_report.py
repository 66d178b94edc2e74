"""Weight accounting (bf16 vs INT4, per part) and the report rendered from it."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from vlmgate.quantize.report import JSON_NAME, MD_NAME, to_markdown, write_report
from vlmgate.quantize.sizes import part_of, sizes_as_dict, weight_sizes


def test_parts_follow_checkpoint_names() -> None:
    assert part_of("model.layers.3.self_attn.q_proj.weight_packed") == "lm_blocks"
    assert part_of("model.language_model.layers.0.mlp.up_proj.weight") == "lm_blocks"
    assert part_of("visual.blocks.0.attn.qkv.weight") == "vision"
    assert part_of("model.visual.merger.mlp.0.weight") == "vision"
    assert part_of("lm_head.weight") == "lm_other"
    assert part_of("model.embed_tokens.weight") == "lm_other"


def _write(tmp_path, tensors):
    tmp_path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    return tmp_path


def test_int4_and_bf16_sides_of_the_same_weights(tmp_path) -> None:
    dense = {
        "model.layers.0.mlp.up_proj.weight": torch.zeros(64, 256, dtype=torch.bfloat16),
        "model.embed_tokens.weight": torch.zeros(32, 256, dtype=torch.float32),  # fp32 on disk counts 2 B in bf16
        "visual.blocks.0.attn.qkv.weight": torch.zeros(16, 16, dtype=torch.bfloat16),
    }
    packed = {
        "model.layers.0.mlp.up_proj.weight_packed": torch.zeros(64, 32, dtype=torch.int32),
        "model.layers.0.mlp.up_proj.weight_scale": torch.zeros(64, 2, dtype=torch.bfloat16),
        "model.layers.0.mlp.up_proj.weight_zero_point": torch.zeros(8, 2, dtype=torch.int32),
        "model.layers.0.mlp.up_proj.weight_shape": torch.tensor([64, 256]),
        "model.embed_tokens.weight": torch.zeros(32, 256, dtype=torch.bfloat16),
        "visual.blocks.0.attn.qkv.weight": torch.zeros(16, 16, dtype=torch.bfloat16),
    }
    original = weight_sizes(_write(tmp_path / "orig", dense))
    quantized = weight_sizes(_write(tmp_path / "int4", packed))
    for part in ("lm_blocks", "lm_other", "vision", "lm", "total"):
        assert quantized[part].bf16_bytes == original[part].bf16_bytes, part
    assert original["lm_other"].bytes == 32 * 256 * 4
    assert original["lm_other"].bf16_bytes == 32 * 256 * 2
    assert quantized["lm_blocks"].bytes == 64 * 32 * 4 + 64 * 2 * 2 + 8 * 2 * 4 + 2 * 8
    assert quantized["lm_blocks"].ratio < 0.3
    assert quantized["lm"].bytes == quantized["lm_blocks"].bytes + quantized["lm_other"].bytes
    assert quantized["vision"].ratio == 1.0


def _report(sizes) -> dict:
    return {
        "method": "gptq",
        "model": "/models/demo",
        "output": "/models/demo-gptq",
        "settings": {"group_size": 128, "symmetric": False, "ignore": ["lm_head"], "calibration": "c.jsonl",
                     "calibration_samples": 4, "dtype": "bfloat16", "device": "cpu", "format": "pack-quantized"},
        "versions": {"llmcompressor": "0.14.0.1"},
        "seconds": {"env": 0.1, "prepare": 1.0, "quantize": 2.0, "evaluate": 3.0, "total": 6.1},
        "sizes": sizes,
        "accuracy": {"examples": 50, "data": "h.jsonl", "bf16": 0.9, "int4": 0.88, "delta_points": -2.0,
                     "answer_agreement": 0.96},
    }  # fmt: skip


def test_report_markdown_and_json_carry_the_figures(tmp_path) -> None:
    sizes = sizes_as_dict(weight_sizes(_write(tmp_path / "m", {"model.layers.0.x.weight": torch.zeros(4, 4)})))
    report = _report(sizes)
    json_path, md_path = write_report(report, tmp_path / "r")
    assert json_path.name == JSON_NAME
    assert md_path.name == MD_NAME
    text = md_path.read_text()
    assert "INT4 W4A16 (GPTQ)" in text
    assert "| bf16 | 90.0% |" in text
    assert "88.0% (-2.0 points)" in text
    assert "96.0%" in text
    report["accuracy"] = None
    assert "not measured" in to_markdown(report)
