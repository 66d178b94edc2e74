"""Examples -> model inputs: chat template, image tokens, labels on the answer only, and padded batches.

The loss covers the final assistant answer and its end-of-turn token, nothing else: the prompt and image tokens are
context. Images are processed by the model's own processor, so training sees exactly what the served model sees.

Run as: imported by train.py and evaluate.py (no command of its own).
"""

from __future__ import annotations

import torch

from vlmgate.finetune.data import Example

IGNORE_INDEX = -100  # label value the cross-entropy loss skips


def prompt_text(example: Example, processor) -> str:
    return processor.apply_chat_template(example.prompt_messages, add_generation_prompt=True, tokenize=False)


def encode_prompt(example: Example, processor) -> dict[str, torch.Tensor]:
    """Model inputs for generating the answer (batch of one)."""
    return dict(processor(text=[prompt_text(example, processor)], images=example.pil_images() or None,
                          return_tensors="pt"))  # fmt: skip


def encode_example(example: Example, processor) -> dict[str, torch.Tensor]:
    """Inputs plus labels for one example (1-D token tensors; images as the processor's flat patches)."""
    prompt = prompt_text(example, processor)
    eos = processor.tokenizer.eos_token or ""
    images = example.pil_images() or None
    full = dict(processor(text=[prompt + example.answer + eos], images=images, return_tensors="pt"))
    prompt_ids = processor(text=[prompt], images=images, return_tensors="pt")["input_ids"][0]
    ids = full["input_ids"][0]
    # The prompt's tokens are a prefix of the full text's tokens for byte-level BPEs with Qwen's split (the answer
    # starts a new pre-token); the common-prefix length keeps this right even if a tokenizer merged across it.
    limit = min(len(prompt_ids), len(ids))
    mismatch = (prompt_ids[:limit] != ids[:limit]).nonzero()
    prompt_len = int(mismatch[0]) if len(mismatch) else limit
    labels = ids.clone()
    labels[:prompt_len] = IGNORE_INDEX
    out = {k: v[0] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v for k, v in full.items()}
    out["labels"] = labels
    return out


def collate(encoded: list[dict[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad token tensors, concatenate image patches and grids (Qwen2-VL takes images flat across a batch)."""
    length = max(len(e["input_ids"]) for e in encoded)
    pads = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX, "mm_token_type_ids": 0}
    batch: dict[str, torch.Tensor] = {}
    for key, pad in pads.items():
        if key in encoded[0]:
            batch[key] = torch.stack(
                [torch.nn.functional.pad(e[key], (0, length - len(e[key])), value=pad) for e in encoded]
            )
    for key in ("pixel_values", "image_grid_thw"):
        parts = [e[key] for e in encoded if key in e]
        if parts:
            batch[key] = torch.cat(parts)
    return batch
