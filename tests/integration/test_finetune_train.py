"""Real (Q)LoRA training on the tiny VLM: resume reproduces an uninterrupted run, the bitsandbytes CPU pitfall is
neutralised, and `vlmgate finetune train` writes an adapter + manifest + loss curve + eval table."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from safetensors.torch import load_file

from vlmgate.finetune.config import FinetuneConfig
from vlmgate.finetune.manifest import model_fingerprint, read_manifest

COLOURS = {"red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune"}

pytestmark = pytest.mark.slow


def write_dataset(root, n: int, name: str = "train") -> str:
    (root / "img").mkdir(parents=True, exist_ok=True)
    path = root / f"{name}.jsonl"
    with path.open("w") as fh:
        for i in range(n):
            colour = list(COLOURS)[i % len(COLOURS)]
            image = f"img/{name}-{i}.png"
            Image.new("RGB", (56, 56), colour).save(root / image)
            user = [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "Colour in French?"}]
            record = {
                "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": COLOURS[colour]}]
            }
            fh.write(json.dumps(record) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return write_dataset(root, 12), write_dataset(root, 4, "eval")


def _cfg(tiny_model_dir, dataset, out, **kw) -> FinetuneConfig:
    fields = {
        "base_model": str(tiny_model_dir), "train_data": dataset[0], "eval_data": dataset[1], "output_dir": str(out),
        "method": "qlora", "rank": 4, "alpha": 8, "dropout": 0.1, "learning_rate": 1e-3, "batch_size": 4,
        "max_steps": 4, "eval_every_steps": 2, "save_every_steps": 2, "max_length": 256, "max_new_tokens": 4,
    }  # fmt: skip
    return FinetuneConfig(**(fields | kw))


def test_resume_after_interruption_equals_uninterrupted_run(tiny_model_dir, dataset, tmp_path):
    from vlmgate.finetune.run import run_training

    straight = run_training(_cfg(tiny_model_dir, dataset, tmp_path / "straight"), evaluate=False)
    cfg = _cfg(tiny_model_dir, dataset, tmp_path / "resumed")
    stopped = run_training(cfg, evaluate=False, stop_at_step=3)  # as if killed after step 3
    assert stopped.steps == 3
    assert not (tmp_path / "resumed" / "adapter").exists()
    resumed = run_training(cfg, evaluate=False)
    assert resumed.steps == straight.steps == 4
    a = load_file(straight.adapter_dir / "adapter_model.safetensors")
    b = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert any(t.abs().sum() > 0 for k, t in a.items() if "lora_B" in k)  # training moved the weights
    for key in a:
        assert (a[key] - b[key]).abs().max() <= 1e-5, key


def test_qlora_survives_eval_forward_on_avx512_bf16_cpus(tiny_model_dir, dataset, monkeypatch):
    """FEASIBILITY pitfall: on AVX512-BF16 CPUs an eval forward repacks 4-bit weights into an inference-only
    layout that breaks (or silently stops) training. Simulate such a CPU, then check the guard."""
    import bitsandbytes.nn.modules as bnb_modules
    import torch

    from vlmgate.finetune.collate import collate, encode_example
    from vlmgate.finetune.data import read_jsonl
    from vlmgate.finetune.model import add_lora, load_base, load_processor

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    cfg = _cfg(tiny_model_dir, dataset, "unused")
    processor = load_processor(tiny_model_dir)
    examples, _ = read_jsonl(dataset[0])
    batch = collate([encode_example(e, processor) for e in examples[:4]], processor.tokenizer.pad_token_id)

    def grads_after(eval_first: bool) -> dict:
        model = add_lora(load_base(tiny_model_dir, "qlora"), cfg.model_copy(update={"dropout": 0.0}))
        linear4bit = [m for m in model.modules() if isinstance(m, bnb_modules.Linear4bit)]
        assert linear4bit
        assert not any(m.support_avx512bf16_for_cpu for m in linear4bit)
        with torch.no_grad():  # make lora_B non-zero so that gradients reach lora_A of every layer
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02, generator=torch.Generator().manual_seed(0))
        if eval_first:
            model.eval()
            with torch.no_grad():
                model(**batch)
            assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in linear4bit)
        model.train()
        model(**batch).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    reference, after_eval = grads_after(False), grads_after(True)
    first_layer = [n for n in reference if "layers.0.self_attn.q_proj.lora_A" in n]
    assert first_layer
    assert reference[first_layer[0]].abs().sum() > 0
    for name, grad in reference.items():
        assert torch.allclose(grad, after_eval[name], atol=1e-6), name


def test_without_the_guard_bitsandbytes_does_repack(tiny_model_dir, dataset, monkeypatch):
    """The check above can fail: with the flag left on, an eval forward converts the weights."""
    import bitsandbytes.nn.modules as bnb_modules
    import torch

    from vlmgate.finetune.model import load_base

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    model = load_base(tiny_model_dir, "qlora").eval()
    layer = next(m for m in model.modules() if isinstance(m, bnb_modules.Linear4bit))
    layer.support_avx512bf16_for_cpu = True
    with torch.no_grad():
        layer(torch.randn(2, layer.in_features))
    assert layer.weight.quant_state.packing_format_for_cpu


def test_cli_train_writes_adapter_manifest_curve_and_table(tiny_model_dir, dataset, tmp_path, capsys):
    from vlmgate.finetune.cli import main

    out = tmp_path / "run"
    code = main(["train", f"base_model={tiny_model_dir}", f"train_data={dataset[0]}", f"eval_data={dataset[1]}",
                 f"output_dir={out}", "method=lora", "rank=4", "alpha=8", "max_steps=2", "batch_size=4",
                 "max_new_tokens=3", "adapter_name=colours", "base_model_name=vlmgate-tiny"])  # fmt: skip
    assert code == 0
    adapter = out / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    assert (out / "loss.png").stat().st_size > 1000
    manifest = read_manifest(adapter)
    assert manifest.name == "colours"
    assert manifest.method == "lora"
    assert manifest.rank == 4
    assert manifest.base_model.fingerprint == model_fingerprint(tiny_model_dir)
    assert manifest.lm_only()
    assert not manifest.vision_tower_lora
    assert len(manifest.target_modules) == 2 * 7  # 2 layers x q,k,v,o,gate,up,down, full paths
    assert all(".language_model.layers." in m for m in manifest.target_modules)
    assert manifest.data.train_examples == 12
    assert manifest.data.eval_examples == 4
    assert {"adapter_exact_match", "base_exact_match", "train_loss"} <= manifest.metrics.keys()
    assert "| base + adapter |" in (out / "eval.md").read_text()
    assert len(json.loads((out / "eval.json").read_text())["rows"]) == 4


def test_training_refuses_bad_data_listing_every_problem(tiny_model_dir, dataset, tmp_path, capsys):
    from vlmgate.finetune.cli import main

    bad = tmp_path / "bad.jsonl"
    with open(dataset[0]) as fh:
        long_question = json.loads(fh.readline())
    long_question["messages"][0]["content"][1]["text"] = "why " * 400
    lines = [json.dumps({"messages": [{"role": "user", "content": "hi"}]}), "{oops", json.dumps(long_question)]
    bad.write_text("\n".join(lines) + "\n")
    (tmp_path / "img").symlink_to(f"{dataset[0].rsplit('/', 1)[0]}/img")
    code = main(["train", f"base_model={tiny_model_dir}", f"train_data={bad}", "eval_fraction=0",
                 f"output_dir={tmp_path / 'run'}", "max_length=128"])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert f"{bad}:1: messages[0].role: no assistant turn" in err
    assert f"{bad}:2: <line>: not valid JSON" in err
    assert f"{bad}:3: messages: too long for the model" in err
    assert not (tmp_path / "run" / "adapter").exists()
