"""Every kind of bad adapter is refused by the gateway with a precise 4xx before the engine sees it; nothing is
recorded, and the engine keeps serving."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.adapter_factory import copy_adapter, lora_pair, make_peft_adapter, write_raw_adapter
from tests.conftest import RunningGateway
from vlmgate.finetune.manifest import AdapterManifest, BaseModelRef, write_manifest
from vlmgate.serve.adapters.validation import base_module_shapes

pytestmark = pytest.mark.engine

MODULE = "model.language_model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def bad_adapters(gateway: RunningGateway, adapter_store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """name -> (path as sent, words the error message must contain)."""
    out, ins = base_module_shapes(gateway.model_dir)["layers.0.self_attn.q_proj"]
    store = adapter_store
    good = make_peft_adapter(gateway.model_dir, store / "bad-base-good", rank=4, targets=["q_proj"])
    cases: dict[str, tuple[str, str]] = {}

    def raw(name: str, config: dict, tensors: dict, words: str) -> None:
        write_raw_adapter(store / name, config, tensors)
        cases[name] = (name, words)

    raw("rank-too-high", {"r": 128}, lora_pair(MODULE, 128, ins, out), "max LoRA rank")
    raw("vision-tower", {"target_modules": ["qkv"]}, lora_pair("model.visual.blocks.0.attn.qkv", 8, 128, 384),
        "vision tower")  # fmt: skip
    raw("lm-head", {"target_modules": ["lm_head"]}, lora_pair("lm_head", 8, out, 1024), "output/embedding")
    raw("modules-to-save", {"modules_to_save": ["lm_head"]}, lora_pair(MODULE, 8, ins, out), "modules_to_save")
    raw("wrong-base", {}, lora_pair(MODULE, 8, ins + 64, out), "different base")
    raw("rank-mismatch", {"r": 4}, lora_pair(MODULE, 8, ins, out), "inconsistent with rank")
    (store / "no-config").mkdir()
    (store / "no-config" / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    cases["no-config"] = ("no-config", "adapter_config.json is missing")
    raw("corrupt-weights", {}, {}, "")
    (store / "corrupt-weights" / "adapter_model.safetensors").write_bytes(os.urandom(64))
    cases["corrupt-weights"] = ("corrupt-weights", "not a readable safetensors")
    foreign = copy_adapter(good, store / "foreign-manifest")
    write_manifest(foreign, AdapterManifest(name="x", base_model=BaseModelRef(name="other", fingerprint="v1:0000"),
                                            method="lora", rank=4, alpha=8, target_modules=[MODULE]))  # fmt: skip
    cases["foreign-manifest"] = ("foreign-manifest", "fingerprint")
    outside = tmp_path_factory.mktemp("outside-store")
    copy_adapter(good, outside / "adapter")
    cases["path-traversal"] = (f"../{outside.name}/adapter", "outside the adapter store")
    cases["absolute-outside"] = (str(outside / "adapter"), "outside the adapter store")
    (store / "symlink-out").symlink_to(outside / "adapter")
    cases["symlink-out"] = ("symlink-out", "outside the adapter store")
    linked = copy_adapter(good, store / "file-link-out")
    (linked / "adapter_model.safetensors").unlink()
    (linked / "adapter_model.safetensors").symlink_to(outside / "adapter" / "adapter_model.safetensors")
    cases["file-link-out"] = ("file-link-out", "outside the adapter store")
    cases["not-a-directory"] = ("does-not-exist", "not a directory")
    return cases


CASE_NAMES = ["rank-too-high", "vision-tower", "lm-head", "modules-to-save", "wrong-base", "rank-mismatch",
              "no-config", "corrupt-weights", "foreign-manifest", "path-traversal", "absolute-outside", "symlink-out",
              "file-link-out", "not-a-directory"]  # fmt: skip


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_adapter_is_refused_and_engine_keeps_serving(
    gateway: RunningGateway, bad_adapters: dict, case: str
) -> None:
    path, words = bad_adapters[case]
    reply = httpx.post(f"{gateway.url}/v1/adapters", json={"name": f"bad-{case}", "path": path}, timeout=60)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == "invalid_adapter"
    assert words in error["message"]
    assert httpx.get(f"{gateway.url}/v1/adapters/bad-{case}").status_code == 404  # nothing recorded
    body = {"model": "vlmgate-demo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=60).status_code == 200


def test_duplicate_name_is_a_conflict(gateway: RunningGateway, bad_adapters: dict) -> None:
    first = httpx.post(f"{gateway.url}/v1/adapters", json={"name": "dup", "path": "bad-base-good"}, timeout=60)
    assert first.status_code == 201, first.text
    second = httpx.post(f"{gateway.url}/v1/adapters", json={"name": "dup", "path": "bad-base-good"}, timeout=60)
    assert second.status_code == 409
    assert httpx.delete(f"{gateway.url}/v1/adapters/dup").status_code == 200
    assert httpx.delete(f"{gateway.url}/v1/adapters/dup").status_code == 404
