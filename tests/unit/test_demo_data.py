"""The demo data generator: deterministic, well-formed JSONL, right answers, and training batches equal to what
the processor and chat template produce (so that what the model learns is what a server sends it)."""

from __future__ import annotations

import base64
import collections
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmgate.finetune.demo.data import write_jsonl
from vlmgate.finetune.demo.questions import KINDS, TRAIN, UNSEEN, answer_for, sample_example, tokenizer_corpus
from vlmgate.finetune.demo.shapes import (
    IMAGE_SIZE,
    OOD_SIZES,
    POSITIONS,
    TRAIN_SIZE_RANGE,
    composite,
    draw_background,
    draw_shapes,
    mirror,
    render,
    render_many,
    sample_scene,
)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generate_is_deterministic(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a", 12, seed=3)
    write_jsonl(tmp_path / "b", 12, seed=3)
    write_jsonl(tmp_path / "c", 12, seed=4)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert (tmp_path / "a" / "data.jsonl").read_bytes() != (tmp_path / "c" / "data.jsonl").read_bytes()


@pytest.mark.parametrize("inline", [False, True])
def test_jsonl_records_follow_the_chat_format(tmp_path: Path, inline: bool) -> None:
    path = write_jsonl(tmp_path, 10, inline=inline)
    lines = path.read_text().splitlines()
    assert len(lines) == 10
    kinds_seen = set()
    for line in lines:
        record = json.loads(line)
        assert list(record) == ["messages"]
        user, assistant = record["messages"]
        assert user["role"] == "user"
        assert assistant["role"] == "assistant"
        assert isinstance(assistant["content"], str)
        assert assistant["content"]
        types = sorted(part["type"] for part in user["content"])
        assert types == ["image_url", "text"]
        url = next(p for p in user["content"] if p["type"] == "image_url")["image_url"]["url"]
        if inline:
            assert url.startswith("data:image/png;base64,")
            image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        else:
            assert not url.startswith("/")
            assert (path.parent / url).is_file()
            image = Image.open(path.parent / url)
        assert image.size == (IMAGE_SIZE, IMAGE_SIZE)
        kinds_seen.add(assistant["content"])
    assert len(kinds_seen) > 3


def test_answers_match_the_scene() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        ex = sample_example(rng)
        scene = ex.scene
        assert ex.answer == answer_for(scene, ex.kind)
        assert 1 <= scene.count <= 4
        assert len(set(scene.cells)) == scene.count
        if ex.kind == "position":
            assert scene.count == 1
            assert ex.answer in POSITIONS
        if ex.kind == "count":
            assert ex.answer == str(scene.count)


def test_mirror_moves_left_to_right_and_keeps_the_rest() -> None:
    rng = np.random.default_rng(1)
    scene = sample_scene(rng, count=1)
    while POSITIONS[scene.cells[0]] not in ("left", "top left", "bottom left"):
        scene = sample_scene(rng, count=1)
    flipped = mirror(scene)
    assert flipped.position == scene.position.replace("left", "right")
    assert (flipped.colour, flipped.shape, flipped.count) == (scene.colour, scene.shape, scene.count)


def test_shapes_are_drawn_where_the_scene_says() -> None:
    rng = np.random.default_rng(2)
    scene = sample_scene(rng, count=1, colour="red", style="ood")  # plain background, centred shape
    pixels = np.asarray(render(scene)).astype(int)
    cx, cy = (int(v) for v in scene.centres[0])
    assert pixels[cy, cx, 0] > pixels[cy, cx, 2] + 60  # red at the centre
    corner = pixels[2, 2] if scene.cells[0] != 0 else pixels[-3, -3]
    assert abs(corner[0] - corner[2]) < 5  # grey background elsewhere


def test_ood_sizes_are_outside_every_training_size() -> None:
    """The card calls the OOD set's sizes smaller or larger than anything seen in training: check both ends."""
    rng = np.random.default_rng(3)
    train = {size for _ in range(2000) for size in sample_scene(rng).sizes}
    ood = {size for _ in range(2000) for size in sample_scene(rng, style="ood").sizes}
    assert train == set(range(TRAIN_SIZE_RANGE[0], TRAIN_SIZE_RANGE[1] + 1))
    assert ood == {s for lo, hi in OOD_SIZES for s in range(lo, hi + 1)}
    assert min(train) > max(OOD_SIZES[0])
    assert max(train) < min(OOD_SIZES[1])


def test_render_many_draws_what_render_draws_in_order() -> None:
    """Big lists are drawn in forked processes: same pixels, same order, as one render() after another."""
    rng = np.random.default_rng(5)
    scenes = [sample_scene(rng) for _ in range(1100)]  # enough for a process per core
    one_by_one = np.stack([np.asarray(render(s)) for s in scenes])
    assert np.array_equal(render_many(scenes), one_by_one)
    assert np.array_equal(render_many(scenes[:7]), one_by_one[:7])
    assert render_many(scenes[:5], draw_shapes).shape == (5, IMAGE_SIZE, IMAGE_SIZE, 4)  # RGBA layers too
    assert render_many([]).shape == (0, IMAGE_SIZE, IMAGE_SIZE, 3)


def test_shuffled_backgrounds_keep_every_shape_where_its_labels_say() -> None:
    from vlmgate.finetune.demo.recipe import ScenePool

    pool = ScenePool(24, seed=0, shuffle_backgrounds=True)
    # A scene over its own background is exactly the rendered scene.
    own = composite(draw_shapes(pool.scenes[3]), draw_background(pool.scenes[3]))
    assert np.array_equal(np.asarray(own), np.asarray(render(pool.scenes[3])))
    examples, images = pool.sample(np.random.default_rng(4), 64)
    foreign = 0
    for ex, image in zip(examples, images, strict=True):
        # Each image is its example's scene (labels mirrored along with the shapes, or not) drawn over the
        # background its scene names, that one possibly mirrored.
        shapes, background = draw_shapes(ex.scene), draw_background(ex.scene)
        assert any(np.array_equal(image, np.asarray(composite(shapes, bg)))
                   for bg in (background, background.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))  # fmt: skip
        (source,) = [
            s for s in pool.scenes if (s.rgb, s.sizes, s.shape) == (ex.scene.rgb, ex.scene.sizes, ex.scene.shape)
        ]
        foreign += source.bg_seed != ex.scene.bg_seed
    assert foreign > 48  # nearly every draw lies on another scene's background


def test_unseen_phrasings_never_reach_training() -> None:
    corpus = set(tokenizer_corpus())
    for kind in KINDS:
        assert not set(UNSEEN[kind]) & set(TRAIN[kind])
        assert not set(UNSEEN[kind]) & corpus
    rng = np.random.default_rng(3)
    train_questions = {sample_example(rng, "position").question.lower() for _ in range(300)}
    unseen_questions = {sample_example(rng, "position", phrasing="unseen").question.lower() for _ in range(50)}
    assert not train_questions & unseen_questions


@pytest.mark.parametrize("kind", ["colour", "shape", "count", "position"])
def test_choice_questions_of_every_kind_offer_the_right_answer(kind: str) -> None:
    """Either/or questions come in every kind but descriptions: two or three answers of the kind, the right one
    among them, in varied order (so that 'red or blue?' is not read as a shape question, nor the first option
    as the answer)."""
    from vlmgate.finetune.demo.questions import POSITION_PHRASES, ask, choices
    from vlmgate.finetune.demo.shapes import COUNT_WORDS, PLURALS, sample_scene

    def offered(text: str, answer: str, plural: bool) -> str:
        if kind == "shape":
            return PLURALS[answer] if plural else f"{'an' if answer[0] in 'aeiou' else 'a'} {answer}"
        if kind == "position":
            return POSITION_PHRASES[answer]
        return COUNT_WORDS[int(answer)] if kind == "count" and answer not in text else answer

    rng = np.random.default_rng(5)
    sizes, first = collections.Counter(), collections.Counter()
    for _ in range(300):
        scene = sample_scene(rng, count=1 if kind == "position" else None)
        answer = answer_for(scene, kind)
        text = choices(rng, kind, answer, scene.count > 1)
        options = text.replace(" or ", ", ").split(", ")
        assert offered(text, answer, scene.count > 1) in options, (text, answer)
        assert len(set(options)) == len(options)
        sizes[len(options)] += 1
        first[options[0] == offered(text, answer, scene.count > 1)] += 1
    assert set(sizes) == {2, 3}
    assert 0.25 < first[True] / 300 < 0.6  # the right answer is not always first
    # ... and they are asked: a share of the training questions of this kind offers a choice.
    asked = [ask(rng, sample_scene(rng, count=1 if kind == "position" else None), kind) for _ in range(400)]
    assert 0.05 < sum(" or " in ex.question for ex in asked) / 400 < 0.3


def test_noise_inserts_made_up_words_and_keeps_the_question_in_order() -> None:
    from vlmgate.finetune.demo.questions import add_noise

    question = "How many shapes are there?"
    noisy = [add_noise(np.random.default_rng(i), question) for i in range(40)]
    assert noisy == [add_noise(np.random.default_rng(i), question) for i in range(40)]  # deterministic
    for text in noisy:
        words = text.split()
        assert 5 + 1 <= len(words) <= 5 + 3
        kept = iter(words)
        assert all(w in kept for w in question.split())  # every original word, in order
    assert len(set(noisy)) == 40


def test_token_mass_splits_each_shape_over_the_tokens_it_covers_and_sums_to_the_count() -> None:
    from vlmgate.finetune.demo.batching import aux_targets, token_mass

    straddling = token_mass((56.0, 20.0), 20).reshape(4, 4)  # the middle column's centre is a token border
    assert straddling[0, 1] == pytest.approx(straddling[0, 2])
    assert straddling[0, 1] > 0.4
    assert straddling.sum() == pytest.approx(1.0)
    inside = token_mass((14.0, 14.0), 14).reshape(4, 4)
    assert inside[0, 0] == pytest.approx(1.0)
    rng = np.random.default_rng(3)
    examples = [sample_example(rng, "count") for _ in range(50)]
    aux = aux_targets(examples)
    mass = aux["mass"]
    assert np.allclose(mass.sum(1).numpy(), [ex.scene.count for ex in examples], atol=1e-4)
    # Tokens holding a quarter of a shape or more are labelled with its kind; every shape labels one at least.
    labelled = aux["token_shape"] != -100
    assert labelled.equal(mass >= 0.25)
    assert (aux["token_shape"][labelled] == aux["shape"].repeat_interleave(16).view(-1, 16)[labelled]).all()
    assert (labelled.sum(1) >= 1).all()


def test_chat_roles_and_answer_words_are_one_token_each(tiny_model_dir: Path) -> None:
    """Every prompt pays for the chat template's scaffold, and every answer word is one prediction."""
    from transformers import AutoTokenizer

    from vlmgate.finetune import tiny_vlm
    from vlmgate.finetune.demo.questions import answer_vocabulary, tokenizer_corpus

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for role in ("system", "user", "assistant"):
        assert len(tokenizer(f"<|im_start|>{role}\n", add_special_tokens=False)["input_ids"]) == 3, role
    demo = tiny_vlm.train_tokenizer(tiny_vlm.tokenizer_corpus(tokenizer_corpus()), 1024)
    for word in answer_vocabulary():
        assert len(demo(word, add_special_tokens=False)["input_ids"]) == 1, word


@pytest.mark.parametrize("system_prompt", ["You are a helpful assistant.", None], ids=["qwen-default", "none"])
def test_fast_batches_equal_the_processor(tiny_model_dir: Path, system_prompt: str | None) -> None:
    """Training builds tokens and pixels by hand; they must be exactly what the processor makes, whether the chat
    template adds a default system prompt (Qwen2-VL's, the test model) or not (the demo model)."""
    import torch
    from transformers import AutoProcessor

    from vlmgate.finetune.demo.batching import PromptEncoder, patchify
    from vlmgate.finetune.tiny_vlm import chat_template

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    processor.chat_template = processor.tokenizer.chat_template = chat_template(system_prompt)
    encoder = PromptEncoder(processor.tokenizer, image_tokens=16)
    rng = np.random.default_rng(4)
    for _ in range(6):
        ex = sample_example(rng)
        image = render(ex.scene)
        parts = [{"type": "image"}, {"type": "text", "text": ex.question}]
        messages = [
            {"role": "user", "content": parts if ex.image_first else parts[::-1]},
            {"role": "assistant", "content": [{"type": "text", "text": ex.answer}]},
        ]
        ref = processor(text=[processor.apply_chat_template(messages)], images=[image], return_tensors="pt")
        ids, labels = encoder.encode(ex.question, ex.answer, ex.image_first)
        assert ref["input_ids"][0, : len(ids)].tolist() == ids
        assert ("<|im_start|>system" in processor.tokenizer.decode(ids)) == (system_prompt is not None)
        answer = [t for t in labels if t != -100]
        assert processor.tokenizer.decode(answer) == ex.answer + "<|im_end|>"
        pixels, grid = patchify(np.asarray(image)[None])
        assert torch.allclose(pixels, ref["pixel_values"], atol=1e-5)
        assert grid.tolist() == ref["image_grid_thw"].tolist()


@pytest.mark.parametrize("system_prompt", ["You are a helpful assistant.", None], ids=["qwen-default", "none"])
def test_conversation_tokens_equal_the_processors(tiny_model_dir: Path, system_prompt: str | None) -> None:
    """Follow-up questions about the same image: exactly the processor's tokens, labels on every answer only."""
    from transformers import AutoProcessor

    from vlmgate.finetune.demo.batching import PromptEncoder, collate
    from vlmgate.finetune.demo.data import chat_messages
    from vlmgate.finetune.demo.recipe import ScenePool
    from vlmgate.finetune.tiny_vlm import chat_template

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    processor.chat_template = processor.tokenizer.chat_template = chat_template(system_prompt)
    encoder = PromptEncoder(processor.tokenizer, image_tokens=16)
    conversations, images = ScenePool(40, seed=0, noise=0.3).conversations(np.random.default_rng(2), 8, turns=3)
    assert max(len(turns) for turns in conversations) == 3
    for turns, image in zip(conversations, images, strict=True):
        messages = chat_messages(turns, {"type": "image"})  # what evaluation and clients send
        ref = processor(text=[processor.apply_chat_template(messages)], images=[Image.fromarray(image)],
                        return_tensors="pt")  # fmt: skip
        ids, labels = encoder.encode_turns(turns)
        assert ref["input_ids"][0, : len(ids)].tolist() == ids
        answers = processor.tokenizer.decode([t for t in labels if t != -100])
        assert answers == "".join(ex.answer + "<|im_end|>" for ex in turns)
    batch = collate(encoder, conversations, images)
    assert batch.inputs["input_ids"].shape[0] == len(conversations) == len(batch.kinds)
    labelled = [sum(t != -100 for t in encoder.encode_turns(turns)[1]) for turns in conversations]
    assert int((batch.labels != -100).sum()) == sum(labelled)


def test_a_follow_up_is_scored_alone(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    from vlmgate.finetune.demo.batching import PromptEncoder, collate, keep_last_answer
    from vlmgate.finetune.demo.evaluate import followup_set

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    encoder = PromptEncoder(tokenizer, image_tokens=16)
    conversations, images = followup_set(3, seed=1)
    assert [turns[-1].kind for turns in conversations] == [k for k in KINDS if k != "describe" for _ in range(3)]
    for first, then in conversations:
        assert first.scene == then.scene
        assert first.kind != then.kind
        assert {first.kind, then.kind} != {"count", "position"}
    single = sample_example(np.random.default_rng(0))
    batch = collate(encoder, [*conversations, single], np.concatenate([images, np.asarray(render(single.scene))[None]]))
    labels = keep_last_answer(batch.labels)
    for turns, row in zip(conversations, labels[:-1], strict=True):
        assert tokenizer.decode([t for t in row if t != -100]) == turns[-1].answer + "<|im_end|>"
    assert torch.equal(labels[-1], batch.labels[-1])  # one answer only: unchanged


def test_no_follow_up_answer_can_be_read_off_an_earlier_one() -> None:
    from vlmgate.finetune.demo.recipe import ScenePool

    pool = ScenePool(40, seed=0)
    conversations, _ = pool.conversations(np.random.default_rng(3), 400, turns=3)
    shapes_seen = collections.Counter()
    for turns in conversations:
        kinds = [ex.kind for ex in turns]
        assert len(set(kinds)) == len(kinds)  # nothing asked twice
        assert len({ex.scene for ex in turns}) == 1  # one image
        assert kinds == ["describe"] or "describe" not in kinds  # a description gives colour, shape and count away
        assert not {"position", "count"} <= set(kinds)  # position needs one shape: counts would lose their balance
        if "position" in kinds:
            assert turns[0].scene.count == 1
        shapes_seen.update(ex.scene.count for ex in turns if ex.kind == "count")
    assert max(len(turns) for turns in conversations) == 3
    assert set(shapes_seen) == {1, 2, 3, 4}
    assert min(shapes_seen.values()) > 0.15 * sum(shapes_seen.values())


def test_follow_ups_go_to_the_share_of_rows_asked_for() -> None:
    from vlmgate.finetune.demo.recipe import ScenePool

    pool = ScenePool(40, seed=0)
    conversations, images = pool.conversations(np.random.default_rng(5), 400, turns=2, share=0.25)
    assert len(images) == 400
    lengths = collections.Counter(len(turns) for turns in conversations)
    assert set(lengths) == {1, 2}
    # A quarter of the rows draw a follow-up; a description, always asked alone, takes some of them back.
    assert 0.12 < lengths[2] / 400 < 0.3, lengths


def test_length_grouping_gathers_the_conversations_with_follow_ups(tiny_model_dir: Path) -> None:
    """Rows with a follow-up are longer; grouped by length they share batches instead of padding every batch."""
    from transformers import AutoTokenizer

    from vlmgate.finetune.demo.batching import PromptEncoder
    from vlmgate.finetune.demo.recipe import ScenePool, length_grouped

    encoder = PromptEncoder(AutoTokenizer.from_pretrained(tiny_model_dir), 16)
    pool, batch, groups = ScenePool(40, seed=0), 8, 8

    def batches_with_follow_ups(grouping: int) -> int:
        rng = np.random.default_rng(6)
        served = length_grouped(lambda n: pool.conversations(rng, n, 2, share=0.25), rng, encoder, batch, grouping)
        return sum(any(len(turns) == 2 for turns in next(served)[0]) for _ in range(groups))

    assert batches_with_follow_ups(groups) <= 4 < batches_with_follow_ups(1)


def test_length_grouped_batches_serve_a_whole_draw_with_less_padding(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from vlmgate.finetune.demo.batching import PromptEncoder
    from vlmgate.finetune.demo.recipe import ScenePool, length_grouped

    encoder = PromptEncoder(AutoTokenizer.from_pretrained(tiny_model_dir), image_tokens=16)
    pool = ScenePool(40, seed=0, noise=0.3)
    batch, groups = 8, 4

    def lengths(examples) -> list[int]:
        return [len(encoder.encode(ex.question, ex.answer, ex.image_first)[0]) for ex in examples]

    rng = np.random.default_rng(1)
    grouped = length_grouped(lambda n: pool.sample(rng, n, KINDS), rng, encoder, batch, groups)
    served = [next(grouped) for _ in range(groups)]
    assert all(len(examples) == batch and len(images) == batch for examples, images in served)
    # The same examples, each with its image, as one ungrouped draw from the same random state.
    drawn, images = pool.sample(np.random.default_rng(1), batch * groups, KINDS)

    def keys(examples, images) -> list[tuple]:
        return [(ex.question, ex.answer, image.tobytes()) for ex, image in zip(examples, images, strict=True)]

    assert sorted(k for examples, images in served for k in keys(examples, images)) == sorted(keys(drawn, images))
    # Batches hold neighbouring lengths, so each pads less than the draw cut in order would.
    ranges = sorted((min(lengths(examples)), max(lengths(examples))) for examples, _ in served)
    assert all(low_next >= high for (_, high), (low_next, _) in zip(ranges, ranges[1:]))
    padded = sum(max(lengths(examples)) * batch for examples, _ in served)
    in_order = sum(max(lengths(drawn[i : i + batch])) * batch for i in range(0, len(drawn), batch))
    assert padded < in_order
    # Off (one group), batches are the plain draws, in the same random stream.
    rng, reference = np.random.default_rng(1), np.random.default_rng(1)
    plain = length_grouped(lambda n: pool.sample(rng, n, KINDS), rng, encoder, batch, 1)
    for _ in range(2):
        examples, images = next(plain)
        assert keys(examples, images) == keys(*pool.sample(reference, batch, KINDS))


def test_sped_up_vision_tower_matches_the_reference_outputs_and_gradients(tiny_model_dir: Path) -> None:
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from vlmgate.finetune.demo.batching import patchify, speed_up_vision

    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    visual = model.model.visual
    rng = np.random.default_rng(5)
    images = np.stack([np.asarray(render(sample_scene(rng))) for _ in range(3)])
    pixels, grid = patchify(images)

    def run() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        visual.zero_grad()
        out = visual(pixels, grid_thw=grid).pooler_output
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        return out.detach(), visual.patch_embed.proj.weight.grad.clone(), visual.blocks[0].attn.qkv.weight.grad.clone()

    reference = run()
    speed_up_vision(model)
    sped_up = run()
    for ref, new in zip(reference, sped_up, strict=True):
        assert torch.allclose(ref, new, atol=1e-5, rtol=1e-4)
    assert reference[1].abs().sum() > 0  # the patch embedding does get a gradient


def test_weight_average_follows_the_weights_and_swaps_back_and_forth() -> None:
    import torch

    from vlmgate.finetune.demo.recipe import WeightAverage

    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = WeightAverage(model)
    with torch.no_grad():
        model.weight.fill_(1.0)
    average.update(model, decay=0.9)
    assert torch.allclose(average.weights["weight"], torch.full((2, 3), 0.1))
    average.swap(model)
    assert torch.allclose(model.weight, torch.full((2, 3), 0.1))
    average.swap(model)
    assert torch.allclose(model.weight, torch.ones(2, 3))


def test_the_overlap_check_rebuilds_the_pool_the_model_was_trained_on(tmp_path: Path) -> None:
    """A model trained with another seed or pool size is checked against its own training images, not the defaults'."""
    from vlmgate.finetune.demo.evaluate import trained_with
    from vlmgate.finetune.demo.recipe import DemoTrainConfig, pool_scenes

    assert trained_with(tmp_path) == DemoTrainConfig()  # no history: the defaults
    (tmp_path / "history.json").write_text(json.dumps({"config": {"seed": 3, "pool_size": 40, "stage1_steps": 9}}))
    cfg = trained_with(tmp_path)
    assert (cfg.seed, cfg.pool_size) == (3, 40)
    assert pool_scenes(cfg.pool_size, cfg.seed) != pool_scenes(40, 0)


def test_demo_eval_scores_every_set_follow_ups_included(tiny_model_dir: Path) -> None:
    from vlmgate.finetune.demo.evaluate import evaluate_model, markdown_table

    report = evaluate_model(tiny_model_dir, per_kind=2, check_generate=2)
    assert list(report["sets"]) == ["heldout", "ood", "unseen", "followup"]
    assert set(report["sets"]["heldout"]) == {*KINDS, "overall"}
    assert set(report["sets"]["followup"]) == {*KINDS, "overall"} - {"describe"}  # never asked as a follow-up
    assert report["overlap_with_training"] == 0
    assert report["generate_check"]["agreement"] == 1.0  # the scoring equals real generate(), even for random weights
    rows = markdown_table(report).splitlines()
    assert rows[-1].startswith("| followup |")
    assert rows[-1].split(" | ")[len(KINDS)] == "-"  # describe
