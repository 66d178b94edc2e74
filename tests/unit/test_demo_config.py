"""`vlmgate demo train --config`: every mistake in the YAML is reported at once, before any training starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmgate.finetune.demo.recipe import DemoTrainConfig


def test_every_config_error_is_reported_together(tmp_path: Path) -> None:
    path = tmp_path / "demo.yaml"
    path.write_text(
        "stage0_steps: many\nlearning_rate: 0.1\nstage1_kind_weights: {colour: 1, size: 2}\n"
        "model:\n  vision_layers: 4\n"
    )
    with pytest.raises(ValueError, match="invalid demo training config") as err:
        DemoTrainConfig.from_yaml(path)
    text = str(err.value)
    assert "stage0_steps: expected int, got 'many'" in text
    assert "unknown key 'learning_rate'" in text
    assert "model: unknown key 'vision_layers'" in text
    assert "stage1_kind_weights: weights >= 0 for kinds among" in text


def test_config_file_and_overrides_set_the_fields(tmp_path: Path) -> None:
    path = tmp_path / "demo.yaml"
    path.write_text("stage1_kind_weights: {colour: 0.5}\nquestion_noise: 0.3\nmodel:\n  vision_depth: 4\n")
    cfg = DemoTrainConfig.from_yaml(path, stage1_steps=7)
    assert cfg.stage1_kind_weights == {"colour": 0.5}
    assert cfg.question_noise == 0.3
    assert cfg.model.vision_depth == 4
    assert cfg.model.rope_theta == 10.0  # the rest stays the demo model's
    assert cfg.stage1_steps == 7
