"""`vlmgate quantize` front door: settings validated all at once before any environment is built; env keying."""

from __future__ import annotations

import json

import pytest

from vlmgate.quantize import env
from vlmgate.quantize.cli import main
from vlmgate.quantize.config import QuantizeConfig
from vlmgate.quantize.job import worker_job


def test_help_explains_the_isolated_environment(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"], prog="vlmgate quantize")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--method {awq,gptq,rtn}" in out
    assert "environment of its own" in out
    assert "--group-size" in out


def test_every_problem_is_reported_at_once_and_no_env_is_built(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(env, "ensure_env", lambda *a, **k: pytest.fail("env must not be built for bad settings"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("taken")
    code = main(["--model", str(tmp_path / "nope"), "--method", "gptq", "--output", str(tmp_path / "out"),
                 "--group-size", "100", "--heldout", str(tmp_path / "missing.jsonl")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    for expected in ("no config.json", "--group-size 100", "missing.jsonl: file not found",
                     "exists and is not empty"):  # fmt: skip
        assert expected in err


def test_already_quantized_model_is_refused(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"format": "pack-quantized"}}))
    cfg = QuantizeConfig(model=tmp_path, method="rtn", output=tmp_path / "o")
    assert any("already quantized" in p for p in cfg.problems())


def test_worker_job_keeps_vision_and_lm_head_in_bf16_by_default(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    job = worker_job(QuantizeConfig(model=tmp_path, output=tmp_path / "o", method="rtn"), None, 0)
    assert "lm_head" in job["ignore"]
    assert "re:.*visual.*" in job["ignore"]
    assert job["sequential_targets"] == ["Qwen2VLDecoderLayer"]
    json.dumps(job)  # crosses into the isolated interpreter as JSON


def test_env_dir_is_keyed_by_requirements(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(env.ENV_VAR, raising=False)
    first = env.resolve_env_dir()
    assert first.name == env.requirements_hash()
    monkeypatch.setattr(env, "REQUIREMENTS", (*env.REQUIREMENTS, "extra==1"))
    assert env.resolve_env_dir() != first
    monkeypatch.setenv(env.ENV_VAR, str(tmp_path / "custom"))
    assert env.resolve_env_dir() == tmp_path / "custom"
    assert env.resolve_env_dir(tmp_path / "flag") == tmp_path / "flag"


def test_env_without_marker_or_with_stale_marker_is_not_ready(tmp_path) -> None:
    interpreter = env.interpreter(tmp_path)
    interpreter.parent.mkdir(parents=True)
    interpreter.write_text("")
    assert not env.is_ready(tmp_path)
    (tmp_path / env.MARKER).write_text(json.dumps({"hash": "stale"}))
    assert not env.is_ready(tmp_path)
    (tmp_path / env.MARKER).write_text(json.dumps({"hash": env.requirements_hash()}))
    assert env.is_ready(tmp_path)
