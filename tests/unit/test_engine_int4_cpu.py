"""An INT4 checkpoint on a CPU whose vLLM build has no 4-bit kernel is refused at start with a clear message,
instead of an engine that loads it and dies on the first request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmgate.serve.config import EngineConfig, LimitsConfig
from vlmgate.serve.engines import vllm
from vlmgate.serve.engines.base import EngineStartError

W4A16 = {"quant_method": "compressed-tensors", "config_groups": {"group_0": {"weights": {"num_bits": 4}}}}


def _model(tmp_path: Path, quant: dict | None) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "qwen2_vl", **({"quantization_config": quant} if quant else {})}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize(
    ("quant", "expected"),
    [
        (None, False),
        (W4A16, True),
        ({"quant_method": "gptq", "bits": 4}, True),
        ({"quant_method": "gptq", "bits": 8}, False),
    ],
)
def test_int4_checkpoints_are_recognised(tmp_path: Path, quant, expected: bool) -> None:
    assert vllm.int4_weights(_model(tmp_path, quant)) is expected


def test_int4_on_a_cpu_without_the_kernel_is_refused_and_bf16_is_not(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(vllm, "cpu_has_int4_kernel", lambda: False)
    int4 = vllm.VLLMEngine("m", str(_model(tmp_path / "int4", W4A16)), EngineConfig(device="cpu"), LimitsConfig())
    with pytest.raises(EngineStartError, match="no 4-bit kernel for this CPU"):
        int4.command(8000)
    bf16 = vllm.VLLMEngine("m", str(_model(tmp_path / "bf16", None)), EngineConfig(device="cpu"), LimitsConfig())
    assert "--model" in bf16.command(8000)
    monkeypatch.setattr(vllm, "cpu_has_int4_kernel", lambda: True)
    assert "--model" in int4.command(8000)


def test_the_int4_bench_says_so_before_starting_any_engine(tmp_path: Path, monkeypatch, capsys) -> None:
    """`python -m vlmgate.quantize.bench` on such a CPU: one clear line and exit 2, not a traceback after the
    bf16 model's whole run."""
    from vlmgate.quantize import bench

    monkeypatch.setattr(vllm, "cpu_has_int4_kernel", lambda: False)
    started = []
    monkeypatch.setattr(vllm.VLLMEngine, "start", lambda self: started.append(self))
    bf16, int4 = _model(tmp_path / "bf16", None), _model(tmp_path / "int4", W4A16)
    assert bench.main(["--bf16", str(bf16), "--int4", str(int4)]) == 2
    assert started == []
    err = capsys.readouterr().err
    assert err.startswith("bench: ")
    assert "no 4-bit kernel for this CPU" in err
    assert "Traceback" not in err
