"""The gateway's drift policy for adapters served on an INT4 base, and the drift_check.json record."""

from __future__ import annotations

import json

import pytest

from vlmgate.quantize.drift import FILENAME, SCHEMA, evaluate_drift_policy, read_result, weights_sha256, write_result


def _result(agreement: float, sha: str = "abc") -> dict:
    return {"schema": SCHEMA, "agreement": agreement, "examples": 40, "accuracy_bf16": 0.95, "accuracy_int4": 0.5,
            "quantized": {"weights_sha256": sha}}  # fmt: skip


@pytest.mark.parametrize(
    ("agreement", "mode", "ok"),
    [(0.95, "warn", True), (0.95, "refuse", True), (0.5, "warn", True), (0.5, "refuse", False), (0.5, "off", True)],
)
def test_policy_by_agreement_and_mode(agreement: float, mode: str, ok: bool) -> None:
    allowed, message = evaluate_drift_policy(_result(agreement), threshold=0.9, mode=mode)
    assert allowed is ok
    if agreement < 0.9 and mode != "off":
        assert "50.0%" in message
        assert "below the threshold 90%" in message
        assert ("refused" in message) is (mode == "refuse")


def test_threshold_is_inclusive() -> None:
    assert evaluate_drift_policy(_result(0.9), threshold=0.9, mode="refuse")[0] is True


def test_missing_check_warns_or_refuses_with_the_fix() -> None:
    ok, message = evaluate_drift_policy(None, mode="warn")
    assert ok
    assert "vlmgate quantize check-adapter" in message
    assert evaluate_drift_policy(None, mode="refuse")[0] is False


def test_check_made_on_other_int4_weights_counts_as_missing() -> None:
    result = _result(1.0, sha="aaa")
    assert evaluate_drift_policy(result, mode="refuse", served_weights_sha256="aaa")[0] is True
    ok, message = evaluate_drift_policy(result, mode="refuse", served_weights_sha256="bbb")
    assert not ok
    assert "other INT4 weights" in message


def test_unknown_mode_is_an_error() -> None:
    with pytest.raises(ValueError, match="off, warn or refuse"):
        evaluate_drift_policy(_result(1.0), mode="block")  # type: ignore[arg-type]


def test_record_round_trip_and_schema_check(tmp_path) -> None:
    assert read_result(tmp_path) is None
    path = write_result(_result(0.7), tmp_path)
    assert path == tmp_path / FILENAME
    assert read_result(tmp_path)["agreement"] == 0.7
    path.write_text(json.dumps({"agreement": 1.0}))
    with pytest.raises(ValueError, match="not a vlmgate.drift_check/1 record"):
        read_result(tmp_path)


def test_weights_hash_changes_with_weight_bytes(tmp_path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"one")
    first = weights_sha256(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"two")
    assert weights_sha256(tmp_path) != first
