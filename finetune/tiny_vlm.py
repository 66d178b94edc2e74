"""Build a tiny Qwen2-VL-architecture model offline: tokenizer trained here, chat template, processor, weights.

Tests, the demo model and benchmarks all start from this: no download, a few seconds on a CPU. The result is an
ordinary Hugging Face model directory that `AutoProcessor.from_pretrained`, transformers and vLLM load like any
Qwen2-VL checkpoint.

Run as: vlmgate demo build-tiny DIR   (or python -m vlmgate.finetune.tiny_vlm DIR)
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The 14 special tokens of Qwen2-VL, in Qwen's order (ids follow the trained vocabulary).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip

# Qwen2's pre-tokenizer split (the same regex its tokenizer.json uses).
QWEN_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

QWEN2_VL_SYSTEM_PROMPT = "You are a helpful assistant."
# Qwen2-VL's chat template, as published with the model ({system} marks where it adds its default system prompt).
_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{system}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)


def chat_template(system_prompt: str | None = QWEN2_VL_SYSTEM_PROMPT) -> str:
    """Qwen2-VL's chat template; it starts a conversation that has no system message with system_prompt, if any."""
    default = (
        "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
        + f"{system_prompt}<|im_end|>\n{{% endif %}}"
    )
    return _TEMPLATE.replace("{system}", default if system_prompt else "")


QWEN2_VL_CHAT_TEMPLATE = chat_template()

# Enough everyday English for a byte-level BPE to learn useful merges; callers add their domain's words.
BASE_CORPUS = """\
You are a helpful assistant. What is in this image? Describe the picture. The image shows a shape.
What colour is it? What color is the object? Which shape do you see? How many are there? Where is it?
It is red. It is green. It is blue. It is yellow. It is purple. It is orange. It is white. It is black.
A circle, a square, a triangle. One, two, three, four. Left, right, top, bottom, center, middle, corner.
Hello! How are you? I am fine, thank you. Yes. No. Maybe. Please answer in one word.
The quick brown fox jumps over the lazy dog. A picture is worth a thousand words.
"""
# The chat template's role names follow <|im_start|> at the start of a line, where no corpus sentence puts them:
# without these lines "system", "user" and "assistant" cost 5, 3 and 5 tokens in every prompt (9 of a demo
# prompt's ~60 tokens), and a training step spends compute on them.
CHAT_ROLES = ["system", "user", "assistant"] * 20


@dataclass
class TinyVLMConfig:
    """Sizes of the tiny model. Defaults: the random-weight test model (~2.5 M parameters, built in seconds)."""

    vocab_size: int = 1024  # total, special tokens included; a multiple of 64
    hidden_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 512
    rope_theta: float = 10000.0
    mrope_section: list[int] = field(default_factory=lambda: [8, 12, 12])  # sums to head_dim / 2
    vision_depth: int = 2
    vision_embed_dim: int = 128
    vision_heads: int = 4
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 64 * 28 * 28  # at most 64 image tokens after the 2x2 merge
    max_position_embeddings: int = 4096
    # What the chat template puts first when a conversation has no system message (None: nothing; Qwen2-VL's own
    # default costs 11 tokens of every prompt).
    system_prompt: str | None = QWEN2_VL_SYSTEM_PROMPT
    seed: int = 0


def tokenizer_corpus(extra: list[str] | None = None) -> list[str]:
    """The lines a tiny model's tokenizer learns from: everyday English, the chat roles, then the caller's own."""
    return BASE_CORPUS.splitlines() + CHAT_ROLES + list(extra or [])


def train_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE in Qwen2's style (NFC, Qwen's split regex, ByteLevel), wrapped as a Qwen2 tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    if vocab_size % 64:
        raise ValueError(f"vocab_size must be a multiple of 64, got {vocab_size}")
    bpe = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(QWEN_SPECIAL_TOKENS),
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    # Fill the vocabulary up to exactly vocab_size so that every row of the output layer is a real token: a
    # padded row that no token maps to would decode to "" if greedy decoding ever picked it.
    missing = vocab_size - bpe.get_vocab_size() - len(QWEN_SPECIAL_TOKENS)
    fillers = [f"<reserved_{i}>" for i in range(missing)]
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=[t for t in QWEN_SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")],
        model_max_length=32768,
    )
    # Fillers are ordinary tokens, so that even a random-weight model's output decodes to visible text.
    tokenizer.add_tokens(fillers, special_tokens=False)
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    assert len(tokenizer) == vocab_size, (len(tokenizer), vocab_size)
    return tokenizer


def build_processor(tokenizer, cfg: TinyVLMConfig):
    from vlmgate.compat import ensure_torchvision

    ensure_torchvision()
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    size = {"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels}
    image_processor = Qwen2VLImageProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
    video_processor = Qwen2VLVideoProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
    return Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=tokenizer.chat_template,
    )


def build_model(tokenizer, cfg: TinyVLMConfig):
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    head_dim = cfg.hidden_size // cfg.num_heads
    if sum(cfg.mrope_section) * 2 != head_dim:
        raise ValueError(f"mrope_section {cfg.mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads,
            "num_key_value_heads": cfg.num_kv_heads,
            "max_position_embeddings": cfg.max_position_embeddings,
            "max_window_layers": cfg.num_layers,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": cfg.rope_theta,
                "mrope_section": cfg.mrope_section,
            },
            "bos_token_id": ids("<|endoftext|>"),
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
            "tie_word_embeddings": False,
        },
        vision_config={
            "depth": cfg.vision_depth,
            "embed_dim": cfg.vision_embed_dim,
            "hidden_size": cfg.hidden_size,
            "num_heads": cfg.vision_heads,
            "mlp_ratio": 4,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(cfg.seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = [ids("<|im_end|>"), ids("<|endoftext|>")]
    model.generation_config.pad_token_id = ids("<|endoftext|>")
    return model


def build_tiny_vlm(
    out_dir: str | Path, cfg: TinyVLMConfig | None = None, extra_corpus: list[str] | None = None
) -> Path:
    """Write a complete tiny Qwen2-VL model directory (random weights) and return its path."""
    import torch

    cfg = cfg or TinyVLMConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(tokenizer_corpus(extra_corpus), cfg.vocab_size)
    tokenizer.chat_template = chat_template(cfg.system_prompt)
    processor = build_processor(tokenizer, cfg)
    model = build_model(tokenizer, cfg).to(torch.bfloat16)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "vlmgate_build.json").write_text(
        json.dumps({"builder": "vlmgate.finetune.tiny_vlm", **asdict(cfg)}, indent=2)
    )
    return out


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="directory to write the model into (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default: 0)")
    args = parser.parse_args(argv)
    path = build_tiny_vlm(args.out_dir, TinyVLMConfig(seed=args.seed))
    print(f"tiny Qwen2-VL model written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
