"""The demo VLM's training recipe: build the tiny Qwen2-VL, align its vision side, then instruction-tune it.

Run as: vlmgate demo train [--out DIR] [--config demo.yaml]   (defaults reproduce the shipped model)

Two stages, following what worked on these CPUs (see FEASIBILITY.md):
  stage 0  vision tower + merger ALONE (no language model in the forward pass) with throwaway linear heads on the
           merger output: colour, shape and count from the max-pooled tokens (a small shape fills only part of
           one or two of the 16 tokens; a mean drowns it) and again from the mean-pooled ones (so that every
           token carries them and the language model can read them with one uniform attention), occupied 3x3
           cells from the flattened tokens, per-token "a shape's centre is here" flags, and each token's share
           of every shape's area, whose sum over the image is the count however a shape straddles tokens (the
           middle cell's centre is a token border); with it (and 300 more steps) held-out count went 0.89 -> 0.94.
  stage 1  the whole model on question answering, loss only on the answer and its <|im_end|>, with the
           stage-0 heads kept as an auxiliary loss, and summary heads on the language model's state at
           <|vision_end|> (layer 2): colour, shape, count, occupied cells, rows and columns. That token sits at
           one fixed M-RoPE offset from every image token, so it can learn where shapes are once; an answer
           token's offset to the image changes with the question's length. Without them held-out position
           stayed at 0.42 in the time budget; with them it reaches 0.97. The same heads also read the state
           that predicts each answer's first token (layer 3), whatever the question: every row then teaches
           the answer position to gather the image's facts, and the last layer only picks the one asked for
           (held-out count 0.931 -> 0.981, describe 0.892 -> 0.930). The last half of stage 1 also keeps
           a moving average of the weights; a validation set of its own picks raw or averaged at the end.
Text M-RoPE uses rope_theta 10 and mrope_section [2, 10, 20]: at the default 1e4 the columns of a 4x4 token
grid are nearly indistinguishable and "where is it?" stays at chance. Images come from a pre-rendered pool
(plus left-right mirroring) because drawing them costs as much CPU as a training step; questions are fresh
every step, kinds and counts balanced.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from PIL import Image
from tqdm import tqdm

from vlmgate.finetune.demo.batching import (
    AuxHeads,
    PromptEncoder,
    SummaryHeads,
    aux_targets,
    collate,
    keep_last_answer,
    patchify,
    speed_up_vision,
)
from vlmgate.finetune.demo.questions import (
    KINDS,
    Example,
    add_noise,
    as_turns,
    ask,
    may_share_image,
    tokenizer_corpus,
)
from vlmgate.finetune.demo.shapes import (
    MAX_COUNT,
    Scene,
    composite,
    draw_background,
    draw_shapes,
    mirror,
    render,
    render_many,
    sample_scene,
)
from vlmgate.finetune.tiny_vlm import TinyVLMConfig, build_tiny_vlm


def demo_model_config() -> TinyVLMConfig:
    """The demo model's shape: 4 text layers, rope_theta 10, mrope [2, 10, 20], images capped at 16 tokens."""
    return TinyVLMConfig(
        num_layers=4,
        # 2 left small shapes at ~0.93 (circle vs square). 4 against 3 (one run each, seed 0, 1000 fresh per kind,
        # shapes 14-30 px; the 4-layer run at 1 thread beside another run): colour / shape / count / position /
        # describe 0.998 / 0.966 / 0.978 / 1.000 / 0.935 against 0.990 / 0.948 / 0.968 / 1.000 / 0.914; with 18-30 px,
        # describe 0.964 against 0.950. But its stage-1 steps took 530 against 375 ms (first 300, 2 threads, same box
        # minutes apart) and stage 0's 256 against ~210 ms: ~18 min in all, over the budget.
        vision_depth=3,
        # Finer patches would fix small shapes (7-px patches merged 4x4, the same 16 tokens: the vision shape head on
        # fresh images 0.952 -> 0.976, 14-17 px 0.93 -> 0.97), but vLLM 0.32's Qwen2-VL builds its patch merger for
        # 2x2 whatever spatial_merge_size says (Qwen2VisionTransformer does not pass it on), so it cannot load such
        # a model; and 7-px patches merged 2x2 are 64 tokens an image. Patches stay Qwen2-VL's 14 px merged 2x2.
        rope_theta=10.0,
        mrope_section=[2, 10, 20],
        max_pixels=112 * 112,  # bigger uploads are scaled to about the 4x4 token grid the model was trained on
        # No default system prompt: its 11 tokens were a fifth of a training row (stage-1 steps ~15% faster).
        system_prompt=None,
        seed=0,
    )


@dataclass
class DemoTrainConfig:
    """Every knob of `vlmgate demo train`; the defaults reproduce the shipped model."""

    seed: int = 0  # seeds weights, scene pool and question sampling
    # Distinct training images (mirroring doubles them). 32000 left stage 0's vision shape head where it was on fresh
    # images (0.950 against 0.952 at 8000, 14-17 px 0.940 / 0.932): fresh shapes are limited by the vision tower, not
    # by how many images it saw. The whole recipe at 24000 instead (1000 fresh per kind; colour / shape / count /
    # position / describe): seed 1, 0.994 / 0.960 / 0.974 / 1.000 / 0.942 against 0.994 / 0.958 / 0.972 / 1.000 /
    # 0.926; seed 0 (alone, --threads 2), 0.982 / 0.944 / 0.969 / 0.998 / 0.933 against 0.990 / 0.948 / 0.968 / 1.000 /
    # 0.914, follow-up count 0.867 against 0.958. Descriptions gained in both, but drawing the 16000 more images took
    # the solo run from 14.4 to 15.0 min, over the budget; paid for with 1450 stage-1 steps (seed 2): 0.986 / 0.964 /
    # 0.972 / 0.999 / 0.932 against 0.992 / 0.963 / 0.970 / 0.999 / 0.942. Within the spread between runs: 8000.
    pool_size: int = 8000
    # Lay each draw's shapes over another pool image's background (ScenePool). The model with one question a row
    # answered shape 0.99 on its training images but 0.94 on fresh ones; with this the gap closed (0.98 on
    # training images), but on 1000 fresh examples per kind two runs scored shape 0.945 / 0.951, describe 0.92 /
    # 0.909 against that model's 0.941 / 0.900: within noise, so off. Small shapes are the limit.
    shuffle_backgrounds: bool = False
    # Vision-only alignment steps (shape is the slow one: ~0.9 after 1000). 1050 (seed 0, alone, 2 threads): 0.990 /
    # 0.967 / 0.974 / 0.999 / 0.935, against 0.995 / 0.972 / 0.986 / 1.000 / 0.950 at 1300.
    stage0_steps: int = 1300
    stage0_batch: int = 48
    stage0_lr: float = 4e-3
    stage1_steps: int = 1500  # full-model question-answering steps (1100: describe 0.88-0.90, 1400-1500: 0.92-0.94)
    stage1_batch: int = 32
    lr_lm: float = 2e-3  # language model (random init, so a high rate)
    # Vision tower (already aligned in stage 0); 0 freezes it: no backward pass through it, stage-1 steps 424 instead
    # of ~480 ms (2 threads), 14.5-15.2 min in all. Four frozen runs (1000 per kind) scored about a point under the
    # model with one question a row: shape 0.924-0.939 (0.941), count 0.943-0.950 (0.958), describe 0.884-0.897
    # (0.900); position 0.935-0.993, the summary heads' race (see summary_weight).
    lr_vision: float = 5e-4
    lr_merger: float = 1e-3
    aux_weight: float = 0.3  # weight of the stage-0 heads' loss during stage 1
    mass_weight: float = 1.0  # weight of the per-token shape-mass head among the stage-0 heads (0: no such head)
    token_shape_weight: float = 0.0  # weight of a per-token shape-kind head among the stage-0 heads (0: none)
    summary_layer: int = 2  # text layer whose <|vision_end|> state the summary heads read (0: no summary heads)
    # Weight of the summary heads' loss during stage 1. Position is learnt last, and late (the summary heads' occupied
    # cells climb ~0.1 per 100 steps): held-out position 0.935 in one frozen-tower run, 0.993 and 0.978 at weight 2,
    # 0.897 at 4 (which slowed the other kinds); one run of each, so the race's luck is in these figures too.
    summary_weight: float = 1.0
    # Summary heads on the state that predicts each answer's first token (the last prompt token), after this text
    # layer (0: none). Every question, whatever it asks, then teaches that position to gather colour, shape, count and
    # the occupied cells, and the last layer only has to pick what was asked. With the <|vision_end|> heads alone,
    # count answers stayed near the vision's mean-pooled count (linear probes on that model, 1000 fresh images:
    # mean-pooled merger tokens 0.926, <|vision_end|> after layer 2 0.974, count answers 0.94), though the flattened
    # merger tokens give the occupied cells, hence the count, at 0.996. Runs at layer 3, 1000 fresh per kind,
    # colour / shape / count / position / describe: weight 1, 1400 steps, with the system prompt: 0.970 / 0.939 /
    # 0.950 / 0.998 / 0.917 (follow-up count 0.806); weight 0.5, same: 0.986 / 0.952 / 0.969 / 0.997 / 0.922; weight 1,
    # 1500 steps, no system prompt (the defaults): 0.995 / 0.955 / 0.981 / 1.000 / 0.930 at 1 thread (shipped) and
    # 0.981 / 0.931 / 0.930 / 0.999 / 0.926 at 2. Without these heads: 0.990 / 0.950 / 0.931 / 0.987 / 0.892. Position
    # is learnt early now (0.98 at step 600, was 0.54), colour late.
    answer_summary_layer: int = 3
    answer_summary_weight: float = 1.0  # weight of their loss
    ema_decay: float = 0.995  # stage 1 also keeps an exponential moving average of the weights (0: off) ...
    ema_start: float = 0.5  # ... from this fraction of stage 1 on; the end picks raw or averaged by validation
    validation_per_kind: int = 200  # examples per kind of the validation set that picks them
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 150  # stage-1 steps between held-out evaluations
    eval_per_kind: int = 48  # held-out examples per question kind in the periodic evaluation
    # Relative sampling weights of the question kinds in stage 1 (a kind not named: 1.0); the stage-0 and summary
    # heads learn from every image whatever it is asked, so this only moves where the answers' loss is spent.
    # Colour is learnt first and position from the summary heads; descriptions need colour, shape and count right.
    # Count at 1.5 (one run, with choice questions, before the answer summary heads): held-out count 0.947, shape
    # 0.941, describe 0.902 against 0.931 / 0.950 / 0.892 at 1.25, unseen phrasings count 0.940 / position 0.829
    # against 0.771 / 0.981: all within the spread between runs, so left at 1.25.
    stage1_kind_weights: dict[str, float] = field(
        default_factory=lambda: {"colour": 0.5, "shape": 1.0, "count": 1.25, "position": 0.75, "describe": 1.5}
    )
    # Stage-1 batches drawn this many at a time, sorted by prompt length and split, so that a batch pads little (1:
    # off). On by default since the follow-ups below (it pays for their longer rows). Measured once each at 8 with
    # one question a row (earlier model; 200 per kind: shape 0.965, describe 0.945, unseen phrasings 0.885 overall):
    # alone, ~10% faster steps, shape 0.945, describe 0.92, unseen 0.894; with `model.system_prompt: null`, 25%
    # faster (0.40 instead of 0.53 s), but describe 0.87 and position 0.945. The system prompt alone, removed: position
    # 0.92, describe 0.905 (its tokens seem to give attention somewhere harmless to go). With the answer summary heads
    # (answer_summary_layer) the system prompt is off by default: its time pays for 100 more steps.
    length_groups: int = 8
    # Stage-1 rows as conversations: a first question about one image and up to this many follow-ups of other kinds
    # (ScenePool.conversations; 0: one question per image). The image and the prompt's fixed tokens, most of a row,
    # then serve several answers (per answer token ~20% less compute), and follow-up questions get trained
    # (single-turn training: follow-up shape 0.15, count 0.55). Measured once (1 follow-up, batch 24, 1250 steps,
    # describe weight 2): 15.5 min, colour/shape/count/describe 1.00/.94/.94/.92 but position 0.60 (the kind every
    # run learns last; not yet learnt there).
    follow_ups: int = 1
    # ... in this share of the rows (the others: one question). A batch is padded to its longest row, so a few rows
    # with follow-ups would make most batches longer: with length_groups > 1 they gather in batches of their own.
    # Follow_ups 1, share 0.25, length_groups 8 (measured before choice questions joined the templates): follow-up
    # answers colour / shape / count / position 0.994 / 0.903 / 0.930 / 0.817, against 0.949 / 0.19 / 0.507 / 0.508
    # with one question a row and no grouping, in 15.8 min (16.0); held-out colour / shape / count / position /
    # describe 0.995 / 0.943 / 0.950 / 0.967 / 0.898 (one question a row: 1.00 / 0.941 / 0.958 / 0.991 / 0.900). With
    # the tower frozen too: 15.2 min, position 0.946. With choice questions too (before the answer summary heads):
    # follow-ups 0.984 / 0.900 / 0.889 / 0.939, held-out 0.990 / 0.950 / 0.931 / 0.987 / 0.892, 15.3 min.
    follow_up_share: float = 0.25
    question_noise: float = 0.3  # share of training questions with made-up words inserted (unfamiliar wording)
    kinds: list[str] = field(default_factory=lambda: list(KINDS))  # question kinds to train and evaluate on
    threads: int = 1  # torch intra-op threads; 1 is far faster than 2 on a busy box
    model: TinyVLMConfig = field(default_factory=demo_model_config)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> DemoTrainConfig:
        """Load a YAML file of the fields above; report every unknown or mistyped key at once."""
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        data.update({k: v for k, v in overrides.items() if v is not None})
        errors = [f"{path}: unknown key {k!r}" for k in data if k not in cls.__dataclass_fields__]
        model = data.pop("model", None) or {}
        errors += [f"{path}: model: unknown key {k!r}" for k in model if k not in TinyVLMConfig.__dataclass_fields__]
        for k, v in data.items():
            default = getattr(cls(), k, None)
            if (
                default is not None
                and not isinstance(v, type(default))
                and not (isinstance(default, float) and isinstance(v, int))
            ):
                errors.append(f"{path}: {k}: expected {type(default).__name__}, got {v!r}")
        weights = data.get("stage1_kind_weights")
        if isinstance(weights, dict) and (
            set(weights) - set(KINDS) or not all(isinstance(w, int | float) and w >= 0 for w in weights.values())
        ):
            errors.append(f"{path}: stage1_kind_weights: weights >= 0 for kinds among {list(KINDS)}, got {weights!r}")
        if errors:
            raise ValueError("invalid demo training config:\n  " + "\n  ".join(errors))
        base = asdict(demo_model_config())
        base.update(model)
        return cls(**data, model=TinyVLMConfig(**base))


def pool_scenes(size: int, seed: int) -> list[Scene]:
    """The training pool's scenes: a quarter of each count, so that counting is balanced and single shapes (position
    questions) are many."""
    rng = np.random.default_rng([seed, 1])
    return [sample_scene(rng, count=1 + i % MAX_COUNT) for i in range(size)]


class ScenePool:
    """Pre-rendered training images and their scenes; `sample` draws balanced examples with fresh questions.

    With shuffle_backgrounds the shapes and the backgrounds are kept apart and every draw lays one scene's shapes
    over another random scene's background (each possibly mirrored), so that the pool's N images become N x N x 4:
    a model can no longer recall an image by its background instead of looking at the shapes."""

    def __init__(self, size: int, seed: int, noise: float = 0.0, shuffle_backgrounds: bool = False) -> None:
        self.noise = noise  # share of questions that get made-up words inserted (questions.add_noise)
        self.shuffle_backgrounds = shuffle_backgrounds
        self.scenes = pool_scenes(size, seed)  # see training_scenes
        if shuffle_backgrounds:
            self.shapes = render_many(self.scenes, draw_shapes, "drawing pool shapes")  # RGBA
            self.backgrounds = render_many(self.scenes, draw_background, "drawing pool backgrounds")
        else:
            self.images = render_many(self.scenes, render, "rendering pool")
        self.single = np.array([i for i, s in enumerate(self.scenes) if s.count == 1])

    def _image(self, rng: np.random.Generator, idx: int) -> tuple[Scene, np.ndarray]:
        """Scene idx's image, mirrored half of the time (and over a random other background if shuffling)."""
        scene = self.scenes[idx]
        flip = rng.random() < 0.5
        if self.shuffle_backgrounds:
            shapes = self.shapes[idx][:, ::-1] if flip else self.shapes[idx]
            back = int(rng.integers(len(self.scenes)))
            background = self.backgrounds[back][:, ::-1] if rng.random() < 0.5 else self.backgrounds[back]
            image = np.asarray(composite(Image.fromarray(np.ascontiguousarray(shapes), "RGBA"),
                                         Image.fromarray(np.ascontiguousarray(background), "RGB")))  # fmt: skip
            # The labels come from the shapes; the background fields name where the background came from.
            other = self.scenes[back]
            scene = replace(scene, background=other.background, bg_rgb=other.bg_rgb, bg_seed=other.bg_seed)
        else:
            image = self.images[idx][:, ::-1] if flip else self.images[idx]
        return (mirror(scene) if flip else scene), image

    def sample(
        self, rng: np.random.Generator, batch: int, kinds: list[str] | tuple[str, ...] = KINDS, weights=None
    ) -> tuple[list, np.ndarray]:
        """batch examples: kinds drawn uniformly (or with these relative weights), each on a random pool image."""
        p = None if weights is None else np.asarray(weights, dtype=float) / np.sum(weights)
        kinds = rng.choice(list(kinds), size=batch, p=p)
        examples, images = [], []
        for kind in kinds:
            idx = int(rng.choice(self.single)) if kind == "position" else int(rng.integers(len(self.scenes)))
            scene, image = self._image(rng, idx)
            examples.append(self._ask(rng, scene, str(kind)))
            images.append(image)
        return examples, np.stack(images)

    def _ask(self, rng: np.random.Generator, scene: Scene, kind: str) -> Example:
        """A fresh question of this kind about the scene; a share of them with made-up words inserted."""
        example = ask(rng, scene, kind)
        if self.noise and rng.random() < self.noise:
            example = replace(example, question=add_noise(rng, example.question))
        return example

    def conversations(
        self,
        rng: np.random.Generator,
        batch: int,
        turns: int,
        kinds: list[str] | tuple[str, ...] = KINDS,
        weights=None,
        share: float = 1.0,
    ) -> tuple[list[list], np.ndarray]:
        """batch conversations of up to `turns` questions of distinct kinds about one pool image each (the first
        kind drawn as in sample(), each follow-up from the kinds still allowed); beyond a `share` of them, one
        question only. Kinds share an image only as questions.may_share_image allows."""
        kinds = list(kinds)
        weights = np.ones(len(kinds)) if weights is None else np.asarray(weights, dtype=float)
        out, images = [], []
        for _ in range(batch):
            chosen: list[str] = []
            allowed = weights.copy()
            limit = turns if share >= 1 or rng.random() < share else 1
            while len(chosen) < limit and allowed.sum() > 0:
                kind = kinds[int(rng.choice(len(kinds), p=allowed / allowed.sum()))]
                chosen.append(kind)
                allowed[[i for i, k in enumerate(kinds) if not may_share_image(kind, k)]] = 0
            idx = int(rng.choice(self.single)) if "position" in chosen else int(rng.integers(len(self.scenes)))
            scene, image = self._image(rng, idx)
            out.append([self._ask(rng, scene, kind) for kind in chosen])
            images.append(image)
        return out, np.stack(images)


def length_grouped(draw: Callable[[int], tuple[list, np.ndarray]], rng: np.random.Generator, encoder: PromptEncoder,
                   batch: int, groups: int) -> Iterator[tuple[list, np.ndarray]]:  # fmt: skip
    """Endless batches for stage 1: `groups` batches' worth of rows drawn at once (draw(n): n examples or
    conversations and their images), sorted by token length and split into batches served in random order, so that
    each batch is padded to little more than its own length (conversations with follow-ups end up together)."""
    while groups == 1:
        yield draw(batch)  # off: the plain draw (the same random stream as ever)
    while True:
        rows, images = draw(batch * groups)
        lengths = [len(encoder.encode_turns(as_turns(row))[0]) for row in rows]
        order = np.argsort(lengths, kind="stable")
        for group in rng.permutation(groups):
            chosen = order[group * batch : (group + 1) * batch]
            yield [rows[i] for i in chosen], images[chosen]


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))) * 0.95 + 0.05


class AnswerOutputs(NamedTuple):
    loss: torch.Tensor  # language-model loss on the answer tokens
    merged: torch.Tensor  # merged image tokens (B, image tokens, hidden), for the aux heads
    match: torch.Tensor  # (B,) bool: greedy decoding would give every answer exactly
    summary: torch.Tensor | None  # summary_layer's hidden state at <|vision_end|> (B, hidden)
    answer_states: torch.Tensor | None  # answer_layer's hidden state where each answer starts (N answers, hidden)
    answer_rows: torch.Tensor | None  # (N,) the row of each of those answers


def answer_loss(model, batch, summary_layer: int = 0, answer_layer: int = 0) -> AnswerOutputs:
    """Language-model loss on answer tokens only; also the merged image tokens (for the aux heads), exact match per
    example, if summary_layer that layer's hidden state at <|vision_end|>, and if answer_layer that layer's state at
    the position that predicts each answer's first token. The output layer runs only at answer positions (most of
    the sequence is prompt)."""
    inputs = batch.inputs
    vision = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True)
    merged = torch.stack(vision.pooler_output)  # (B, image tokens, hidden)
    rest = {k: v for k, v in inputs.items() if k != "pixel_values"}
    states = bool(summary_layer or answer_layer)
    out = model.model(**rest, mm_encoder_outputs={"image": vision}, output_hidden_states=states)
    hidden = out.last_hidden_state
    summary = None
    if summary_layer:
        at_end = inputs["input_ids"] == model.config.vision_end_token_id  # one per example
        summary = out.hidden_states[summary_layer][at_end]
    target = batch.labels[:, 1:]
    where = target != -100
    answer_states = answer_rows = None
    if answer_layer:
        starts = where & (batch.labels[:, :-1] == -100)  # the last prompt token before each answer
        answer_states, answer_rows = out.hidden_states[answer_layer][:, :-1][starts], starts.nonzero()[:, 0]
    logits = model.lm_head(hidden[:, :-1][where])
    loss = F.cross_entropy(logits, target[where])
    misses = torch.zeros(len(target)).index_add_(0, where.nonzero()[:, 0], (logits.argmax(-1) != target[where]).float())
    return AnswerOutputs(loss, merged, misses == 0, summary, answer_states, answer_rows)


def match_examples(
    model, encoder, examples, images, batch_size: int = 64, last_answer_only: bool = False
) -> list[bool]:
    """Per example: would greedy decoding give exactly the answer? (teacher-forced, see batching.exact_match)
    Examples may be conversations (lists of turns); last_answer_only scores their last answer alone."""
    hits: list[bool] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = collate(encoder, examples[start : start + batch_size], images[start : start + batch_size])
            if last_answer_only:
                batch = replace(batch, labels=keep_last_answer(batch.labels))
            hits += [bool(ok) for ok in answer_loss(model, batch)[2].tolist()]
    model.train(was_training)
    return hits


def evaluate_examples(
    model, encoder, examples, images, batch_size: int = 64, last_answer_only: bool = False
) -> dict[str, float]:
    """Held-out exact match per question kind (teacher-forced, equal to greedy decoding's exact match); for
    conversations with last_answer_only, of their last answer, per the kind of their last question."""
    hits = match_examples(model, encoder, examples, images, batch_size, last_answer_only)
    asked = [as_turns(row)[-1].kind for row in examples]
    kinds = [k for k in KINDS if k in asked]
    return {k: float(np.mean([h for h, a in zip(hits, asked, strict=True) if a == k])) for k in kinds}


def _optimizer(groups, cfg: DemoTrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)


def stage1_groups(model, heads: AuxHeads, summary_heads: torch.nn.Module, cfg: DemoTrainConfig) -> list[dict]:
    """Stage 1's optimizer parameter groups (summary_heads: every summary head, at the language model's rate); with
    lr_vision 0 the vision tower (patch embedding and blocks) is left out and frozen, so that no gradient flows
    through it (the merger still learns)."""
    visual = model.model.visual
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.startswith("model.visual")], "lr": cfg.lr_lm},
        {"params": list(visual.merger.parameters()), "lr": cfg.lr_merger},
        {"params": list(heads.parameters()), "lr": cfg.lr_merger},
        {"params": list(summary_heads.parameters()), "lr": cfg.lr_lm},
    ]
    tower = [*visual.blocks.parameters(), *visual.patch_embed.parameters()]
    if cfg.lr_vision:
        groups.insert(1, {"params": tower, "lr": cfg.lr_vision})
    for p in tower:
        p.requires_grad_(bool(cfg.lr_vision))
    return groups


def train(cfg: DemoTrainConfig, out_dir: str | Path, log=print) -> dict:
    """Build, train and save the demo model into out_dir; returns the training history (also history.json)."""
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    from vlmgate.finetune.demo.evaluate import heldout_set

    started = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(out_dir)
    build_tiny_vlm(out, cfg.model, extra_corpus=tokenizer_corpus())
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = Qwen2VLForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
    speed_up_vision(model)
    model.train()
    image_tokens = 16
    encoder = PromptEncoder(tokenizer, image_tokens)
    heads = AuxHeads(cfg.model.hidden_size, image_tokens, cfg.mass_weight, cfg.token_shape_weight)
    summary_heads = SummaryHeads(cfg.model.hidden_size)
    answer_heads = SummaryHeads(cfg.model.hidden_size)
    pool = ScenePool(cfg.pool_size, cfg.seed, cfg.question_noise, cfg.shuffle_backgrounds)
    eval_examples, eval_images = heldout_set(
        cfg.eval_per_kind, style="train", phrasing="train", seed=cfg.seed + 7, kinds=cfg.kinds
    )
    history: dict = {"config": asdict(cfg), "stage0": [], "stage1": [], "eval": []}
    rng = np.random.default_rng([cfg.seed, 2])
    prep_s = time.perf_counter() - started

    # Stage 0: vision tower + merger alone.
    visual = model.model.visual
    opt = _optimizer([{"params": [*visual.parameters(), *heads.parameters()], "lr": cfg.stage0_lr}], cfg)
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.stage0_steps), desc="stage 0 (vision)")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.stage0_lr * _schedule(step, cfg.stage0_steps, cfg.warmup_steps)
        examples, images = pool.sample(rng, cfg.stage0_batch, cfg.kinds)
        pixel_values, grid = patchify(images)  # this stage reads no text: the questions are not even tokenised
        merged = visual(pixel_values, grid_thw=grid).pooler_output
        loss, acc = heads.loss(merged.view(len(examples), image_tokens, -1), aux_targets(examples))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*visual.parameters(), *heads.parameters()], cfg.grad_clip)
        opt.step()
        if step % 20 == 0 or step == cfg.stage0_steps - 1:
            history["stage0"].append({"step": step, "loss": loss.item(), "load1": os.getloadavg()[0], **acc})
            bar.set_postfix(loss=f"{loss.item():.3f}", **{k: f"{v:.2f}" for k, v in acc.items()})
    stage0_s = time.perf_counter() - t0

    # Stage 1: the whole model (or all but the vision tower) on question answering.
    groups = stage1_groups(model, heads, torch.nn.ModuleList([summary_heads, answer_heads]), cfg)
    for g in groups:
        g["base_lr"] = g["lr"]
    opt = _optimizer(groups, cfg)
    t1 = time.perf_counter()
    ema: WeightAverage | None = None
    kind_weights = [cfg.stage1_kind_weights.get(k, 1.0) for k in cfg.kinds]
    kind_weights = kind_weights if len(set(kind_weights)) > 1 else None  # uniform: the default draw
    if cfg.follow_ups:
        turns = 1 + cfg.follow_ups
        draw = lambda n: pool.conversations(rng, n, turns, cfg.kinds, kind_weights, cfg.follow_up_share)  # noqa: E731
    else:
        draw = lambda n: pool.sample(rng, n, cfg.kinds, kind_weights)  # noqa: E731
    batches = length_grouped(draw, rng, encoder, cfg.stage1_batch, cfg.length_groups)
    bar = tqdm(range(cfg.stage1_steps), desc="stage 1 (Q&A)")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * _schedule(step, cfg.stage1_steps, cfg.warmup_steps)
        examples, images = next(batches)
        batch = collate(encoder, examples, images)
        lm_loss, merged, match, summary, answer_states, answer_rows = answer_loss(
            model, batch, cfg.summary_layer, cfg.answer_summary_layer
        )
        aux_loss, _ = heads.loss(merged, batch.aux)
        loss = lm_loss + cfg.aux_weight * aux_loss
        summary_acc: dict[str, float] = {}
        if summary is not None:
            summary_loss, summary_acc = summary_heads.loss(summary, batch.aux)
            loss = loss + cfg.summary_weight * summary_loss
        if answer_states is not None:
            answer_aux = {k: v[answer_rows] for k, v in batch.aux.items()}
            answer_summary_loss, answer_acc = answer_heads.loss(answer_states, answer_aux)
            loss = loss + cfg.answer_summary_weight * answer_summary_loss
            summary_acc |= {f"answer_{k}": v for k, v in answer_acc.items()}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.grad_clip)
        opt.step()
        if step % 20 == 0:
            history["stage1"].append({"step": step, "loss": lm_loss.item(), "train_em": match.float().mean().item(),
                                      **{f"summary_{k}": v for k, v in summary_acc.items()}})  # fmt: skip
        if (step + 1) % cfg.eval_every == 0 or step == cfg.stage1_steps - 1:
            scores = evaluate_examples(model, encoder, eval_examples, eval_images)
            # The 1-minute load average says how contended the CPU was (the box may be shared).
            load1 = os.getloadavg()[0]
            history["eval"].append({"step": step + 1, "elapsed_s": time.perf_counter() - t1, "load1": load1, **scores})
            log(f"stage 1 step {step + 1}: held-out " + " ".join(f"{k} {v:.2f}" for k, v in scores.items()))
            # A usable model (and its history) after every evaluation, should a long run be cut short.
            model.save_pretrained(out)
            (out / "history.json").write_text(json.dumps(history, indent=1))
        if cfg.ema_decay and step >= cfg.ema_start * cfg.stage1_steps:
            ema = ema or WeightAverage(model)
            ema.update(model, cfg.ema_decay)
        bar.set_postfix(loss=f"{lm_loss.item():.3f}")
    if ema is not None:
        history["weights"] = pick_weights(model, ema, encoder, cfg)
        log(f"validation: raw {history['weights']['raw']:.3f}, averaged {history['weights']['averaged']:.3f}; "
            f"keeping the {history['weights']['kept']} weights")  # fmt: skip
    stage1_s = time.perf_counter() - t1

    history["timing_s"] = {
        "prepare": prep_s,
        "stage0": stage0_s,
        "stage1": stage1_s,
        "total": time.perf_counter() - started,
    }
    model.eval()
    model.save_pretrained(out)  # fp32 for now; `finalize` decides on bf16
    (out / "history.json").write_text(json.dumps(history, indent=1))
    return history


class WeightAverage:
    """Exponential moving average of a model's weights over the last stretch of training.

    Late in training each step's weights still jitter around the optimum, and which examples a model gets wrong
    changes from one checkpoint to the next (measured: four runs missed mostly different held-out examples);
    their average usually sits closer to the optimum than any one of them."""

    def __init__(self, model) -> None:
        self.weights = {n: p.detach().clone() for n, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model, decay: float) -> None:
        for n, p in model.named_parameters():
            self.weights[n].lerp_(p, 1 - decay)

    @torch.no_grad()
    def swap(self, model) -> None:
        """Exchange the model's weights with the averaged ones (call again to swap back)."""
        for n, p in model.named_parameters():
            current = p.detach().clone()
            p.copy_(self.weights[n])
            self.weights[n] = current


def pick_weights(model, ema: WeightAverage, encoder, cfg: DemoTrainConfig) -> dict:
    """Keep the raw or the averaged weights, whichever scores better on a validation set of its own (a seed stream
    apart from both the periodic evaluation's and `vlmgate demo eval`'s); leaves the winner in the model."""
    from vlmgate.finetune.demo.evaluate import heldout_set

    examples, images = heldout_set(
        cfg.validation_per_kind, style="train", phrasing="train", seed=cfg.seed + 11, kinds=cfg.kinds
    )
    raw = float(np.mean(match_examples(model, encoder, examples, images)))
    ema.swap(model)
    averaged = float(np.mean(match_examples(model, encoder, examples, images)))
    if averaged < raw:
        ema.swap(model)
    return {"raw": raw, "averaged": averaged, "kept": "averaged" if averaged >= raw else "raw"}


def training_scenes(cfg: DemoTrainConfig) -> set:
    """Every scene training saw (pool and mirrors), cheap to rebuild: to prove evaluation scenes are new."""
    scenes = pool_scenes(cfg.pool_size, cfg.seed)
    return set(scenes) | {mirror(s) for s in scenes}
