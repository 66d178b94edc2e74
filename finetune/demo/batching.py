"""Fast training batches for the demo model: the processor's exact tensors, built without the processor.

Training runs thousands of small steps on two CPU cores, so per-example overhead matters. The demo images all
have one size, so their pixel patches are a fixed reshape of the pixels, and the chat template is a fixed
string around the question; this module does both directly (tests prove the result equals
`AutoProcessor(...)` on the same conversation, token for token and pixel for pixel). It also holds the
training-only speed-ups of the model itself (`speed_up_vision`: batched vision attention, and the patch embedding
as one matrix product instead of a 3-D convolution).
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from vlmgate.finetune.demo.questions import Example, as_turns
from vlmgate.finetune.demo.shapes import COLOURS, GRID, IMAGE_SIZE, SHAPES

PATCH, MERGE, TEMPORAL = 14, 2, 2
# OpenAI CLIP normalisation, as in Qwen2-VL's preprocessor config.
PIXEL_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
PIXEL_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
TOKEN_SHAPE_MASS = 0.25  # share of a shape a token must hold to be labelled with the shape's kind


# Qwen2-VL's normalisation as one multiply-add on 0..255 values: (v / 255 - mean) / std.
_SCALE = torch.from_numpy(1.0 / (255.0 * PIXEL_STD)).view(1, 3, 1, 1, 1)
_SHIFT = torch.from_numpy(-PIXEL_MEAN / PIXEL_STD).view(1, 3, 1, 1, 1)


def patchify(images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (B, H, W, 3) -> (pixel_values (B*gh*gw, 3*2*14*14), image_grid_thw (B, 3)), as Qwen2-VL's processor.

    One copy into patch order (each still image twice, for the temporal patch), then normalised in place: a
    32-image batch in ~2 ms instead of the ~9 that numpy's float passes over the whole batch took."""
    b, h, w, c = images.shape
    gh, gw = h // PATCH, w // PATCH
    x = torch.from_numpy(np.ascontiguousarray(images)).view(b, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH, c)
    x = x.permute(0, 1, 4, 2, 5, 7, 3, 6).unsqueeze(6)  # B, rows, cols, merge row, merge col, C, (T), P, P
    pixel_values = torch.empty((b * gh * gw, c, TEMPORAL, PATCH, PATCH), dtype=torch.float32)
    pixel_values.view(b, gh // MERGE, gw // MERGE, MERGE, MERGE, c, TEMPORAL, PATCH, PATCH).copy_(
        x.expand(-1, -1, -1, -1, -1, -1, TEMPORAL, -1, -1)
    )
    pixel_values.mul_(_SCALE).add_(_SHIFT)
    grid = torch.tensor([[1, gh, gw]] * b, dtype=torch.long)
    return pixel_values.view(b * gh * gw, c * TEMPORAL * PATCH * PATCH), grid


@dataclass
class Batch:
    """Model inputs plus what the loss and the auxiliary heads need."""

    inputs: dict[str, torch.Tensor]  # input_ids, attention_mask, mm_token_type_ids, pixel_values, image_grid_thw
    labels: torch.Tensor  # (B, L), -100 except on the answer tokens and the closing <|im_end|>
    kinds: list[str]
    aux: dict[str, torch.Tensor]  # colour, shape, count (class ids), cells (B, 9 multi-hot), tokens, mass (B, n_tok)


class PromptEncoder:
    """Token ids of one user turn (image + question) and the assistant's answer, as the chat template makes them."""

    def __init__(self, tokenizer, image_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.image_block = "<|vision_start|>" + "<|image_pad|>" * image_tokens + "<|vision_end|>"
        self.im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self.pad = tokenizer.pad_token_id
        # What the chat template puts around one user turn (a default system prompt, if it adds one, the roles).
        marker = "\x00"
        around = tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False,
                                               add_generation_prompt=True)  # fmt: skip
        self.before, self.after = around.split(marker)
        # ... and between an answer's closing <|im_end|> and the next user turn's text (a follow-up question).
        two = tokenizer.apply_chat_template(
            [{"role": "user", "content": "\x01"}, {"role": "assistant", "content": "\x02"},
             {"role": "user", "content": marker}], tokenize=False, add_generation_prompt=True)  # fmt: skip
        self.between = two.split("\x02")[1].split(marker)[0].removeprefix("<|im_end|>")
        self._cache: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        """Token ids of text, no special tokens added (those it spells out, like <|image_pad|>, are read as such).
        Memoised, straight from the Rust tokenizer: the same questions and answers recur all through training, and
        the Python wrapper around each call cost more than the tokenizing."""
        ids = self._cache.get(text)
        if ids is None:
            if len(self._cache) >= 200_000:
                self._cache.clear()
            ids = self._cache[text] = self.tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids
        return ids

    def prompt(self, question: str, image_first: bool = True) -> str:
        user = self.image_block + question if image_first else question + self.image_block
        return f"{self.before}{user}{self.after}"

    def encode(self, question: str, answer: str, image_first: bool = True) -> tuple[list[int], list[int]]:
        prompt_ids = self.ids(self.prompt(question, image_first))
        answer_ids = self.ids(answer) + [self.im_end]
        return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids

    def encode_turns(self, turns: list[Example]) -> tuple[list[int], list[int]]:
        """A conversation about one image: the first turn carries the image, the follow-up questions only text;
        labels on every answer and its <|im_end|>."""
        ids, labels = self.encode(turns[0].question, turns[0].answer, turns[0].image_first)
        for ex in turns[1:]:
            prompt = self.ids(self.between + ex.question + self.after)
            answer = self.ids(ex.answer) + [self.im_end]
            ids, labels = ids + prompt + answer, labels + [-100] * len(prompt) + answer
        return ids, labels


def token_mass(centre: tuple[float, float], size: float) -> np.ndarray:
    """Share of one shape (its bounding box) that falls in each merged image token, row-major; sums to 1.

    A shape in the middle row or column straddles two tokens (the middle cell's centre is a token border), so
    "which token holds its centre" is a knife-edge call; these shares split it smoothly, and their sum over the
    image is the count whatever the split."""
    side, token = IMAGE_SIZE // (PATCH * MERGE), PATCH * MERGE
    edges = np.arange(side + 1) * token

    def overlap(c: float) -> np.ndarray:
        lo, hi = c - size / 2, c + size / 2
        return np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0, None) / size

    return np.outer(overlap(centre[1]), overlap(centre[0])).ravel()


def aux_targets(examples: list[Example]) -> dict[str, torch.Tensor]:
    """Labels for the auxiliary vision heads: colour, shape, count, occupied cells, per-token centres and shape mass."""
    side = IMAGE_SIZE // (PATCH * MERGE)  # merged tokens per side (4)
    cells = torch.zeros(len(examples), GRID * GRID)
    tokens = torch.zeros(len(examples), side * side)
    mass = np.zeros((len(examples), side * side), dtype=np.float32)
    for i, ex in enumerate(examples):
        for cell, (cx, cy), size in zip(ex.scene.cells, ex.scene.centres, ex.scene.sizes, strict=True):
            cells[i, cell] = 1
            tokens[i, min(int(cy) // (PATCH * MERGE), side - 1) * side + min(int(cx) // (PATCH * MERGE), side - 1)] = 1
            mass[i] += token_mass((cx, cy), size)
    shape = torch.tensor([SHAPES.index(ex.scene.shape) for ex in examples])
    # Tokens holding a good part of a shape are labelled with its kind (the others are ignored): a label per
    # token, not just per image, for the per-token shape head.
    token_shape = torch.where(torch.from_numpy(mass) >= TOKEN_SHAPE_MASS, shape[:, None], -100)
    return {
        "colour": torch.tensor([list(COLOURS).index(ex.scene.colour) for ex in examples]),
        "shape": shape,
        "count": torch.tensor([ex.scene.count - 1 for ex in examples]),
        "cells": cells,
        "tokens": tokens,
        "mass": torch.from_numpy(mass),
        "token_shape": token_shape,
    }


def collate(encoder: PromptEncoder, examples: list[Example] | list[list[Example]], images: np.ndarray) -> Batch:
    """Right-padded batch of examples (or of conversations: lists of turns about one image) and their uint8
    (B, H, W, 3) images."""
    conversations = [as_turns(row) for row in examples]
    encoded = [encoder.encode_turns(turns) for turns in conversations]
    examples = [turns[0] for turns in conversations]
    length = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(examples), length), encoder.pad, dtype=torch.long)
    labels = torch.full((len(examples), length), -100, dtype=torch.long)
    attention = torch.zeros((len(examples), length), dtype=torch.long)
    for i, (ids, lab) in enumerate(encoded):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attention[i, : len(ids)] = 1
    pixel_values, grid = patchify(images)
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "mm_token_type_ids": (input_ids == encoder.image_pad).long(),
        "pixel_values": pixel_values,
        "image_grid_thw": grid,
    }
    return Batch(inputs, labels, [ex.kind for ex in examples], aux_targets(examples))


def keep_last_answer(labels: torch.Tensor) -> torch.Tensor:
    """Labels of a batch of conversations with every answer but the last unlabelled: to score a follow-up alone."""
    labels = labels.clone()
    for row in labels:
        labelled = (row != -100).nonzero().flatten()
        gaps = (labelled[1:] - labelled[:-1] > 1).nonzero().flatten()
        if len(gaps):
            row[: labelled[gaps[-1] + 1]] = -100
    return labels


def exact_match(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per example: greedy decoding reproduces the whole answer and stops (teacher-forced argmax, all correct).

    logits (B, L, V) predict the next token. Greedy decoding emits exactly the answer iff the argmax at each
    answer position is the answer's next token, so this equals generate()'s exact match at a fraction of the
    cost (evaluate.py cross-checks it against real generation)."""
    target = labels[:, 1:]
    hit = (logits[:, :-1].argmax(-1) == target) | (target == -100)
    return hit.all(dim=1)


def speed_up_vision(model) -> None:
    """Two exact rewrites of the vision tower for CPU training (same outputs and gradients, tested):

    - attention for all same-size images at once (one SDPA call, not one per image): transformers' non-flash
      path loops over images; with equal lengths a batched call computes the same thing (block-diagonal
      attention). Falls back to the original for mixed sizes.
    - the patch embedding as one matrix product: it is a Conv3d whose kernel equals its stride and input, and
      oneDNN's 3-D convolution (forward and backward) took a third of a vision-only training step on CPU."""
    from transformers.models.qwen2_vl.modeling_qwen2_vl import PatchEmbed, VisionAttention, apply_rotary_pos_emb_vision

    def attention(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        if lengths.numel() < 2 or bool((lengths != lengths[0]).any()):
            return VisionAttention.forward(self, hidden_states, cu_seqlens, position_embeddings, max_seqlen, **kwargs)
        total, n = hidden_states.shape[0], int(lengths[0])
        q, k, v = self.qkv(hidden_states).reshape(total, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = apply_rotary_pos_emb_vision(q, k, *position_embeddings)
        q, k, v = (t.reshape(total // n, n, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scaling)
        return self.proj(out.transpose(1, 2).reshape(total, -1))

    def patch_embed(self, hidden_states):
        weight = self.proj.weight
        return F.linear(hidden_states.reshape(-1, weight[0].numel()).to(weight.dtype), weight.flatten(1))

    for module in model.modules():
        if isinstance(module, VisionAttention):
            module.forward = types.MethodType(attention, module)
        elif isinstance(module, PatchEmbed) and module.proj.bias is None:
            module.forward = types.MethodType(patch_embed, module)


def probe_loss(logits: dict[str, torch.Tensor], cells: torch.Tensor, aux: dict[str, torch.Tensor]
               ) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """Loss and training accuracy of class probes (colour, shape, count: cross-entropy) plus an occupied-cells
    probe (multi-label, right only when all 9 cells are), the part AuxHeads and SummaryHeads share."""
    loss = sum(F.cross_entropy(lg, aux[name]) for name, lg in logits.items())
    loss = loss + F.binary_cross_entropy_with_logits(cells, aux["cells"])
    acc = {name: (lg.argmax(-1) == aux[name]).float().mean().item() for name, lg in logits.items()}
    acc["cells"] = ((cells > 0) == aux["cells"].bool()).all(1).float().mean().item()
    return loss, acc


class AuxHeads(torch.nn.Module):
    """Throwaway linear probes on the merger output that teach the vision side what the questions will need.

    Colour, shape and count are read twice, from the max-pooled and from the mean-pooled tokens. Max pooling
    learns shapes fast: an 18-px shape fills part of one to four of the 16 tokens, and a mean drowns it in
    background. Mean pooling makes every token carry the answers, so the language model can read them with
    one uniform attention (trained with max pooling alone, it was still at chance on colour after 300 steps)."""

    POOLED = {"colour": len(COLOURS), "shape": len(SHAPES), "count": 4}

    def __init__(self, dim: int, n_tokens: int, mass_weight: float = 0.0, token_shape_weight: float = 0.0) -> None:
        super().__init__()
        self.mass_weight = mass_weight
        self.token_shape_weight = token_shape_weight
        self.max_heads = torch.nn.ModuleDict({k: torch.nn.Linear(dim, n) for k, n in self.POOLED.items()})
        self.mean_heads = torch.nn.ModuleDict({k: torch.nn.Linear(dim, n) for k, n in self.POOLED.items()})
        self.cells = torch.nn.Linear(dim * n_tokens, GRID * GRID)
        self.tokens = torch.nn.Linear(dim, 1)
        # Per-token shape mass (see token_mass): summed over the image it is the count, so a language model can
        # count with one uniform attention over the image tokens.
        self.mass = torch.nn.Linear(dim, 1) if mass_weight else None
        # The kind of shape each token holds a good part of: a label per token rather than one per image.
        self.token_shape = torch.nn.Linear(dim, len(SHAPES)) if token_shape_weight else None

    def loss(self, merged: torch.Tensor, aux: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """merged: (B, n_tokens, dim). Returns the summed loss and per-head training accuracy (max-pooled)."""
        by_max = {name: head(merged.amax(1)) for name, head in self.max_heads.items()}
        by_mean = {name: head(merged.mean(1)) for name, head in self.mean_heads.items()}
        loss, acc = probe_loss(by_max, self.cells(merged.flatten(1)), aux)
        loss = loss + sum(F.cross_entropy(lg, aux[name]) for name, lg in by_mean.items())
        tokens = self.tokens(merged).squeeze(-1)
        loss = loss + F.binary_cross_entropy_with_logits(tokens, aux["tokens"])
        if self.mass is not None:
            mass = self.mass(merged).squeeze(-1)
            loss = loss + self.mass_weight * F.mse_loss(mass, aux["mass"], reduction="sum") / len(mass)
            acc["mass_count"] = (mass.sum(1).round() == aux["count"] + 1).float().mean().item()
        if self.token_shape is not None:
            logits = self.token_shape(merged).flatten(0, 1)
            loss = loss + self.token_shape_weight * F.cross_entropy(logits, aux["token_shape"].flatten())
        return loss, acc


class SummaryHeads(torch.nn.Module):
    """Throwaway probes on the language model's hidden state at <|vision_end|>, a few layers up.

    Where a shape sits is known to the language model only through M-RoPE: an attention score depends on the
    offset between two tokens. From an answer position that offset changes with the question's length, so reading
    "top left" from there has to be learned for every phrasing. <|vision_end|> sits at one fixed offset from every
    image token: these heads make it gather colour, shape, count and the occupied cells into its hidden state,
    where any later token finds them by content, whatever the phrasing."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.classes = torch.nn.ModuleDict({k: torch.nn.Linear(dim, n) for k, n in AuxHeads.POOLED.items()})
        self.cells = torch.nn.Linear(dim, GRID * GRID)
        self.rows_cols = torch.nn.Linear(dim, 2 * GRID)  # occupied rows, occupied columns

    def loss(self, summary: torch.Tensor, aux: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """summary: (B, dim), the hidden state at <|vision_end|>. Returns the loss and per-head accuracy.

        Rows and columns are asked for on their own too: M-RoPE rotates rows and columns in separate frequency
        bands, so an attention head can pick out a row (or a column) alone, and these targets reward that first."""
        logits = {name: head(summary) for name, head in self.classes.items()}
        loss, acc = probe_loss(logits, self.cells(summary), aux)
        grid = aux["cells"].view(-1, GRID, GRID)
        rows_cols = torch.cat([grid.amax(2), grid.amax(1)], dim=1)
        return loss + F.binary_cross_entropy_with_logits(self.rows_cols(summary), rows_cols), acc
