"""The adapter manifest round-trips, reports bad files clearly, and the base fingerprint means what it says."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from vlmgate.finetune.manifest import (
    MANIFEST_FILENAME,
    AdapterManifest,
    BaseModelRef,
    ManifestError,
    compatibility_problems,
    lm_module_path,
    model_fingerprint,
    read_manifest,
    write_manifest,
)

CONFIG = {
    "architectures": ["Qwen2VLForConditionalGeneration"],
    "model_type": "qwen2_vl",
    "dtype": "bfloat16",
    "text_config": {"hidden_size": 8, "num_hidden_layers": 1, "vocab_size": 16, "num_attention_heads": 2},
}


def _model(tmp_path, name="base", config=CONFIG, layout="model.layers", dtype=np.float32):
    out = tmp_path / name
    out.mkdir()
    (out / "config.json").write_text(json.dumps(config))
    tensors = {
        f"{layout}.0.self_attn.q_proj.weight": np.zeros((8, 8), dtype),
        "lm_head.weight": np.zeros((16, 8), dtype),
        "visual.blocks.0.attn.qkv.weight": np.zeros((3, 3), dtype),
    }
    save_file(tensors, str(out / "model.safetensors"))
    return out


def _manifest(**overrides) -> AdapterManifest:
    fields = {
        "name": "french",
        "base_model": BaseModelRef(name="base", fingerprint="v1:abc"),
        "method": "qlora",
        "rank": 16,
        "alpha": 32,
        "target_modules": ["model.language_model.layers.0.self_attn.q_proj"],
    }
    return AdapterManifest(**(fields | overrides))


def test_fingerprint_ignores_dtype_layout_and_vision_but_not_architecture(tmp_path):
    base = model_fingerprint(_model(tmp_path))
    # Same LM in another dtype, another writer's key layout, or with quantized storage: same fingerprint.
    assert model_fingerprint(_model(tmp_path, "f16", dtype=np.float16)) == base
    assert model_fingerprint(_model(tmp_path, "inmem", layout="model.language_model.layers")) == base
    assert model_fingerprint(_model(tmp_path, "dtypecfg", config=CONFIG | {"dtype": "float32"})) == base
    wider = CONFIG | {"text_config": CONFIG["text_config"] | {"hidden_size": 16}}
    assert model_fingerprint(_model(tmp_path, "wider", config=wider)) != base


def test_lm_module_path_maps_quantized_storage_and_skips_vision():
    assert lm_module_path("model.layers.3.mlp.up_proj.weight_packed") == "layers.3.mlp.up_proj"
    assert lm_module_path("model.language_model.layers.3.mlp.up_proj.weight") == "layers.3.mlp.up_proj"
    assert lm_module_path("model.visual.blocks.0.attn.qkv.weight") is None


def test_manifest_round_trip_and_compatibility(tmp_path):
    manifest = _manifest(metrics={"exact_match": 0.97})
    write_manifest(tmp_path, manifest)
    loaded = read_manifest(tmp_path)
    assert loaded == manifest
    assert loaded.lm_only()
    assert compatibility_problems(loaded, "v1:abc", max_lora_rank=64) == []
    problems = compatibility_problems(loaded, "v1:other", max_lora_rank=8)
    assert len(problems) == 2
    assert "fingerprint" in problems[0]
    assert "max LoRA rank 8" in problems[1]


def test_vision_targets_are_not_lm_only():
    assert not _manifest(target_modules=["model.visual.blocks.0.attn.qkv"], vision_tower_lora=True).lm_only()


def test_bad_manifests_name_file_and_field(tmp_path):
    with pytest.raises(ManifestError, match="no adapter manifest"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_FILENAME).write_text(json.dumps({"name": "x", "rank": 0}))
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path)
    message = str(info.value)
    assert MANIFEST_FILENAME in message
    for field in ("rank", "base_model", "method", "alpha", "target_modules"):
        assert field in message
    (tmp_path / MANIFEST_FILENAME).write_text(json.dumps({"format_version": 99}))
    with pytest.raises(ManifestError, match="newer"):
        read_manifest(tmp_path)
