"""The gateway's drift policy when adapters are registered on an INT4 base (no engine: a stub that records loads).

An adapter trained on the bf16 base may answer differently on its 4-bit copy; `vlmgate quantize check-adapter`
writes the measured agreement into the adapter's drift_check.json, and the gateway warns (registers it, records
why) or refuses (400, nothing recorded) by config. The real check on real weights is in
tests/integration/test_quantize_run.py; the gateway path end to end is in the same file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.adapter_factory import lora_pair, write_raw_adapter
from tests.unit.test_adapter_manager import StubEngine
from vlmgate.quantize.drift import SCHEMA, weights_sha256, write_result
from vlmgate.serve.adapters.manager import AdapterManager
from vlmgate.serve.adapters.registry import AdapterRegistry
from vlmgate.serve.errors import InvalidRequestError

MODULE = "model.layers.0.self_attn.q_proj"


def _int4_base(path: Path, seed: int = 0) -> Path:
    """A compressed-tensors style checkpoint: one packed 32x32 projection (8 int4 values per int32)."""
    path.mkdir(parents=True)
    config = {"architectures": ["Qwen2VLForConditionalGeneration"], "quantization_config": {"format": "pack-quantized"}}
    (path / "config.json").write_text(json.dumps(config))
    packed = np.random.default_rng(seed).integers(0, 2**31, (32, 4)).astype(np.int32)
    save_file({f"{MODULE}.weight_packed": packed, f"{MODULE}.weight_shape": np.array([32, 32], dtype=np.int64)},
              str(path / "model.safetensors"))  # fmt: skip
    return path


def _drift_check(adapter: Path, int4: Path, agreement: float) -> None:
    quantized = {"path": str(int4), "weights_sha256": weights_sha256(int4)}
    record = {"schema": SCHEMA, "agreement": agreement, "examples": 40, "accuracy_bf16": 0.95,
              "accuracy_int4": 0.95 * agreement, "quantized": quantized}  # fmt: skip
    write_result(record, adapter)


@pytest.fixture
def setup(tmp_path: Path):
    store = tmp_path / "store"
    for name in ("good", "drifts", "unchecked", "other-weights"):
        write_raw_adapter(store / name, {"target_modules": ["q_proj"]}, lora_pair(MODULE, 8, 32, 32))
    served = _int4_base(tmp_path / "int4")
    _drift_check(store / "good", served, 0.975)
    _drift_check(store / "drifts", served, 0.40)  # deliberately mismatched: INT4 answers disagree
    _drift_check(store / "other-weights", _int4_base(tmp_path / "other-int4", seed=1), 1.0)
    engine = StubEngine()
    engine.model_path = str(served)

    def manager(policy: str) -> AdapterManager:
        registry = AdapterRegistry(tmp_path / f"registry-{policy}.sqlite3")
        return AdapterManager(registry, {"base": engine}, store, drift_policy=policy, drift_threshold=0.9)

    return manager, engine


async def test_refuse_policy_rejects_drifting_unchecked_and_foreign_checks_and_records_nothing(setup) -> None:
    manager, engine = setup
    strict = manager("refuse")
    reasons = {}
    for name in ("drifts", "unchecked", "other-weights"):
        with pytest.raises(InvalidRequestError) as caught:
            await strict.register(name, name)
        assert (caught.value.status, caught.value.code, caught.value.param) == (400, "adapter_drift", "path")
        reasons[name] = caught.value.message
        assert strict.registry.get(name) is None
    assert "40.0%" in reasons["drifts"]
    assert "below the threshold 90%" in reasons["drifts"]
    assert "no drift check" in reasons["unchecked"]
    assert "other INT4 weights" in reasons["other-weights"]
    assert engine.calls == []  # nothing reached the engine
    record = await strict.register("good", "good")
    assert record.state == "live"
    assert record.extra["drift"]["passed"]
    assert record.extra["drift"]["agreement"] == 0.975


async def test_warn_policy_registers_but_records_and_logs_why(setup, caplog) -> None:
    manager, _ = setup
    lenient = manager("warn")
    with caplog.at_level(logging.WARNING, logger="vlmgate.serve.adapters.manager"):
        record = await lenient.register("drifts", "drifts")
    assert record.state == "live"
    drift = record.extra["drift"]
    assert (drift["ok"], drift["passed"], drift["policy"], drift["agreement"]) == (True, False, "warn", 0.40)
    assert "below the threshold" in drift["message"]
    assert any("drifts" in r.getMessage() and "below the threshold" in r.getMessage() for r in caplog.records)
    assert lenient.registry.get("drifts").extra["drift"] == drift  # durable: in the registry entry


async def test_full_precision_base_and_policy_off_skip_the_check(setup, tmp_path: Path) -> None:
    manager, engine = setup
    assert "drift" not in (await manager("off").register("drifts", "drifts")).extra
    engine.model_path = "/nonexistent/base"  # not a local INT4 checkpoint
    assert "drift" not in (await manager("refuse").register("unchecked", "unchecked")).extra
