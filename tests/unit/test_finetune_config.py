"""Fine-tuning configs: every problem reported at once with file:line and a fix; overrides; example configs load."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmgate.finetune.config import ConfigError, FinetuneConfig, describe_fields, load_config, parse_overrides

EXAMPLES = Path(__file__).resolve().parents[2] / "finetune" / "examples"


def test_all_errors_at_once_with_lines(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train_data: x.jsonl\nrank: 0\nlearning_rate: fast\nmethod: full\nranks: 8\n")
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    problems = info.value.problems
    text = "\n".join(problems)
    assert f"{cfg}:2: rank" in text
    assert f"{cfg}:3: learning_rate" in text
    assert f"{cfg}:4: method" in text
    assert f"{cfg}:5: ranks" in text
    assert "unknown setting" in text
    assert "base_model" in text
    assert "Hugging Face model directory" in text
    assert len(problems) == 5


def test_paths_are_checked_and_overrides_win(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "train.jsonl").write_text("")
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("base_model: model\ntrain_data: train.jsonl\neval_data: nope.jsonl\n")
    with pytest.raises(ConfigError, match=r"ok.yaml:3: eval_data: file .*nope.jsonl does not exist"):
        load_config(cfg)
    loaded = load_config(cfg, parse_overrides(["eval_data=null", "rank=16", "target_modules=[q_proj, v_proj]"]))
    assert loaded.rank == 16
    assert loaded.target_modules == ["q_proj", "v_proj"]
    assert loaded.base_model == str(tmp_path / "model")  # absolute, so a resume elsewhere finds it
    assert loaded.alpha == 128  # untouched defaults are the field's recipe
    with pytest.raises(ConfigError, match="<command line>: rank"):
        load_config(cfg, parse_overrides(["eval_data=null", "rank=-1"]))
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["rank"])


def test_defaults_are_the_documented_recipe():
    fields = FinetuneConfig.model_fields
    assert (fields["rank"].default, fields["alpha"].default, fields["learning_rate"].default) == (64, 128, 2e-4)
    assert fields["epochs"].default == 3
    assert fields["method"].default == "qlora"
    assert "vision_tower_lora" in describe_fields()


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_load_and_start_with_their_command(example):
    first = example.read_text().splitlines()[0]
    assert first.startswith("# ")
    assert f"vlmgate finetune train finetune/examples/{example.name}" in first
    cfg = load_config(example, check_paths=False)
    assert cfg.rank <= 64  # servable with the project's default --max-lora-rank
