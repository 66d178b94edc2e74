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
    path.write_text("stage1_kind_weights: {colour: 0.5}\nquestion_noise: 0.3\nmodel:\n  vision_depth: 2\n")
    cfg = DemoTrainConfig.from_yaml(path, stage1_steps=7)
    assert cfg.stage1_kind_weights == {"colour": 0.5}
    assert cfg.question_noise == 0.3
    assert cfg.model.vision_depth == 2
    assert cfg.model.rope_theta == 10.0  # the rest stays the demo model's
    assert cfg.stage1_steps == 7


@pytest.mark.parametrize("lr_vision", [0.0, 5e-4], ids=["frozen", "trained"])
def test_stage1_freezes_the_vision_tower_when_its_rate_is_0(tiny_model_dir: Path, lr_vision: float) -> None:
    import numpy as np
    import torch
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    from vlmgate.finetune.demo.batching import AuxHeads, PromptEncoder, SummaryHeads, collate
    from vlmgate.finetune.demo.recipe import ScenePool, answer_loss, stage1_groups

    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    heads, summary_heads = AuxHeads(256, 16, 1.0), SummaryHeads(256)
    groups = stage1_groups(model, heads, summary_heads, DemoTrainConfig(lr_vision=lr_vision))
    optimised = {id(p) for g in groups for p in g["params"]}
    visual = model.model.visual
    tower = [*visual.blocks.parameters(), *visual.patch_embed.parameters()]
    assert all((id(p) in optimised) == bool(lr_vision) for p in tower)
    assert all(id(p) in optimised for p in [*visual.merger.parameters(), *model.lm_head.parameters()])

    examples, images = ScenePool(8, seed=0).sample(np.random.default_rng(0), 2)
    batch = collate(PromptEncoder(AutoTokenizer.from_pretrained(tiny_model_dir), 16), examples, images)
    loss, merged, _, summary, _, _ = answer_loss(model, batch, summary_layer=1)
    (loss + heads.loss(merged, batch.aux)[0] + summary_heads.loss(summary, batch.aux)[0]).backward()
    assert all((p.grad is not None) == bool(lr_vision) for p in tower)
    assert visual.merger.mlp[0].weight.grad.abs().sum() > 0


def test_answer_states_are_read_where_each_answer_starts(tiny_model_dir: Path) -> None:
    """The answer-summary heads read the state that predicts each answer's first token: one per answer, follow-ups
    included, in the row it belongs to."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    from vlmgate.finetune.demo.batching import PromptEncoder, collate
    from vlmgate.finetune.demo.recipe import ScenePool, answer_loss

    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    conversations, images = ScenePool(8, seed=0).conversations(np.random.default_rng(0), 3, turns=2, share=0.5)
    assert sorted(len(c) for c in conversations) != [1, 1, 1]  # some follow-ups to find
    batch = collate(PromptEncoder(tokenizer, 16), conversations, images)
    with torch.no_grad():
        out = answer_loss(model, batch, answer_layer=1)
        rest = {k: v for k, v in batch.inputs.items() if k != "pixel_values"}
        vision = model.model.get_image_features(batch.inputs["pixel_values"], batch.inputs["image_grid_thw"],
                                                return_dict=True)  # fmt: skip
        layer1 = model.model(**rest, mm_encoder_outputs={"image": vision}, output_hidden_states=True).hidden_states[1]

    assert out.answer_rows.tolist() == [i for i, turns in enumerate(conversations) for _ in turns]
    expected = []
    for i, turns in enumerate(conversations):
        ids = batch.inputs["input_ids"][i].tolist()
        for turn in turns:  # the first answer token follows the assistant header each time
            answer_ids = tokenizer(turn.answer, add_special_tokens=False)["input_ids"]
            starts = [p for p in range(len(ids)) if ids[p + 1 : p + 1 + len(answer_ids)] == answer_ids]
            start = next(p for p in starts if (i, p) not in expected and batch.labels[i, p + 1] != -100)
            expected.append((i, start))
    assert torch.allclose(out.answer_states, torch.stack([layer1[i, p] for i, p in expected]), atol=1e-5)
