"""Workload generation: arrival schedules, the model mix, synthetic images and the JSONL dataset reader."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from vlmgate.loadtest.config import ConfigError, LoadTestConfig, ModelWeight, parse_image_sizes
from vlmgate.loadtest.dataset import load_chat_dataset
from vlmgate.loadtest.workload import arrival_offsets, build_requests, model_shares


@pytest.mark.parametrize(("arrival", "burstiness", "expected_cv"), [("poisson", 1.0, 1.0), ("gamma", 0.25, 2.0)])
def test_random_arrivals_have_the_requested_mean_rate_and_burstiness(arrival, burstiness, expected_cv):
    rng = np.random.default_rng(7)
    gaps = np.diff(arrival_offsets(rate=5.0, arrival=arrival, burstiness=burstiness, rng=rng, count=20000))
    assert gaps.mean() == pytest.approx(1 / 5.0, rel=0.05)
    # A gamma gap of shape k has coefficient of variation 1/sqrt(k): 1 for Poisson, 2 for k=0.25.
    assert gaps.std() / gaps.mean() == pytest.approx(expected_cv, rel=0.08)


def test_constant_arrivals_are_evenly_spaced_and_stop_at_the_duration():
    offsets = arrival_offsets(rate=4.0, arrival="constant", burstiness=1.0, rng=np.random.default_rng(0),
                              duration_s=2.0)  # fmt: skip
    assert offsets == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75])


def test_model_shares_uniform_zipf_and_explicit_weights():
    names = [ModelWeight(name=n) for n in ("a", "b", "c")]
    assert model_shares(names, "uniform", 1.0) == pytest.approx([1 / 3] * 3)
    assert model_shares(names, "zipf", 1.0) == pytest.approx(np.array([1, 1 / 2, 1 / 3]) / (11 / 6))
    weighted = [ModelWeight(name="a", weight=3), ModelWeight(name="b", weight=1)]
    assert model_shares(weighted, "zipf", 1.0) == pytest.approx([0.75, 0.25])


def test_requests_follow_the_model_mix_and_carry_images_of_the_requested_sizes():
    mix = [ModelWeight(name="base", weight=3), ModelWeight(name="ad", weight=1)]
    sizes = parse_image_sizes("64x48:1,32x32:1")
    config = LoadTestConfig(url="http://x", models=mix, images_per_request=2, image_sizes=sizes, prompt_words=5)
    specs = build_requests(config, 400)
    share_base = sum(s.model == "base" for s in specs) / len(specs)
    assert share_base == pytest.approx(0.75, abs=0.06)
    seen = set()
    for spec in specs[:20]:
        parts = spec.messages[0]["content"]
        urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
        assert len(urls) == spec.image_count == 2
        for url in urls:
            assert url.startswith("data:image/png;base64,")
            seen.add(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size)
    assert seen == {(64, 48), (32, 32)}
    # Same seed, same workload: runs are reproducible.
    assert [s.messages for s in build_requests(config, 5)] == [s.messages for s in specs[:5]]


def test_dataset_drops_the_answer_and_inlines_relative_image_paths(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "img" / "a.png")
    record = {"messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "img/a.png"}},
                                     {"type": "text", "text": "What colour?"}]},
        {"role": "assistant", "content": "red"},
    ]}  # fmt: skip
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(record) + "\n\n" + json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    conversations = load_chat_dataset(path)
    assert [c.images for c in conversations] == [1, 0]
    first = conversations[0].messages
    assert [m["role"] for m in first] == ["user"]
    assert first[0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_dataset_reports_every_bad_line_with_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    image_part = {"type": "image_url", "image_url": {"url": "missing.png"}}
    lines = ['{"messages": []}', "not json", json.dumps({"messages": [{"role": "user", "content": [image_part]}]}),
             '{"messages": [{"role": "user", "content": "fine"}]}']  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as info:
        load_chat_dataset(path)
    errors = info.value.errors
    assert len(errors) == 3
    assert errors[0].startswith(f"{path}:1: field 'messages'")
    assert errors[1].startswith(f"{path}:2: not valid JSON")
    assert f"{path}:3: messages[0].content[0]" in errors[2]
    assert "missing.png" in errors[2]
