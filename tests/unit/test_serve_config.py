"""Gateway configuration: defaults, YAML, environment and overrides; every problem reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmgate.serve.config import ConfigError, load_config


def test_defaults_are_loopback_and_safe() -> None:
    config = load_config(environ={})
    assert (config.host, config.port) == ("127.0.0.1", 8000)
    assert config.limits.allow_remote_images is False
    assert config.auth.api_keys == []


def test_yaml_env_and_overrides_layer_in_order(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "port: 9000\nhost: 127.0.0.1\nmodels:\n  - path: /models/a\n    name: a\nlimits:\n  max_tokens: 64\n"
    )
    env = {"VLMGATE_PORT": "9100", "VLMGATE_LIMITS__MAX_TOKENS": "128", "VLMGATE_API_KEYS": "k1, k2"}
    config = load_config(path, overrides={"limits.max_tokens": 256}, environ=env)
    assert config.port == 9100  # env beats YAML
    assert config.limits.max_tokens == 256  # flags beat env
    assert config.models[0].name == "a"
    assert config.auth.api_keys == ["k1", "k2"]


def test_model_name_defaults_to_directory_name() -> None:
    config = load_config(overrides={"models": [{"path": "/models/Qwen2-VL-2B-Instruct/"}]}, environ={})
    assert config.models[0].name == "Qwen2-VL-2B-Instruct"


def test_every_problem_is_reported_at_once_with_location(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "prot: 80\nlimits:\n  max_image_byte: 5\nmodels:\n  - path: /m\n    engine:\n      max_lora_rank: -1\n"
        "      url: ftp://x\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    problems = caught.value.problems
    assert any("prot" in p and "did you mean 'port'" in p for p in problems)
    assert any("limits.max_image_byte" in p and "max_image_bytes" in p for p in problems)
    assert str(path) in str(caught.value)


def test_type_errors_name_field_and_value(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("port: 99999\nmodels:\n  - path: /m\n    engine:\n      max_lora_rank: 0\n      url: ftp://x\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    text = "\n".join(caught.value.problems)
    assert "port" in text
    assert "models.0.engine.max_lora_rank" in text
    assert "models.0.engine.url" in text
    assert len(caught.value.problems) == 3


def test_unreadable_and_non_mapping_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", environ={})
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml", environ={})


def test_duplicate_model_names_rejected() -> None:
    with pytest.raises(ConfigError, match="unique"):
        load_config(overrides={"models": [{"path": "/a/m"}, {"path": "/b/m"}]}, environ={})
