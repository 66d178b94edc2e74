"""Build LoRA adapters for tests: real PEFT ones (random weights, so they change the output) and deliberately broken
ones (written by hand as adapter_config.json + safetensors, to exercise each validation rule)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import vlmgate  # noqa: F401  (installs the torchvision guard before transformers is imported)

LM_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_base(model_dir: Path):
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype="auto")
    return model.eval(), AutoProcessor.from_pretrained(model_dir)


def make_peft_adapter(model_dir: Path, out_dir: Path, rank: int = 8, seed: int = 0, targets: list[str] | None = None,
                      **lora_kwargs: object) -> Path:  # fmt: skip
    """A PEFT LoRA adapter with random A and B (init_lora_weights=False), so it visibly changes greedy output."""
    import torch
    from peft import LoraConfig, get_peft_model

    model, _ = load_base(model_dir)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets or LM_TARGETS, init_lora_weights=False,
                        **lora_kwargs)  # fmt: skip
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # make the change big enough to flip greedy choices on a tiny model
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(out_dir)
    return out_dir


def peft_greedy(model_dir: Path, adapter_dir: Path | None, prompts: list[str], max_new_tokens: int = 8,
                image: Path | None = None) -> list[str]:  # fmt: skip
    """Greedy answers of transformers (+ peft when adapter_dir is given); each prompt asked about `image` if given."""
    import torch
    from peft import PeftModel
    from PIL import Image

    model, processor = load_base(model_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir).eval()
    answers = []
    for prompt in prompts:
        content = prompt if image is None else [{"type": "image"}, {"type": "text", "text": prompt}]
        text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=False)  # fmt: skip
        if image is None:
            inputs = processor.tokenizer(text, return_tensors="pt")
        else:
            inputs = processor(text=[text], images=[Image.open(image).convert("RGB")], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        text = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        # A reply cut by max_tokens can end inside a multi-byte character: vLLM's detokenizer holds those bytes
        # back, transformers shows U+FFFD. Compare the complete characters.
        answers.append(text.rstrip("\ufffd"))
    return answers


def peft_decisive_prefixes(model_dir: Path, adapter_dir: Path, prompts: list[str], min_margin: float = 0.2,
                           max_new_tokens: int = 8) -> list[str]:  # fmt: skip
    """For each prompt, the part of transformers + peft's greedy answer decided by a clear margin: the tokens
    up to the first step whose top two log-probabilities are within `min_margin` nats.

    A random-weight adapter makes a tiny model's distribution flat, and at a near-tie bf16 rounding picks the
    token (transformers in bf16 and in fp32 disagree there too). An engine must match this prefix exactly."""
    import torch
    from peft import PeftModel

    model, processor = load_base(model_dir)
    model = PeftModel.from_pretrained(model, adapter_dir).eval()
    prefixes = []
    for prompt in prompts:
        text = processor.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)  # fmt: skip
        inputs = processor.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True)  # fmt: skip
        new = out.sequences[0, inputs["input_ids"].shape[1] :]
        decided = 0
        for scores in out.scores:
            top = torch.log_softmax(scores[0].float(), -1).topk(2).values
            if float(top[0] - top[1]) < min_margin:
                break
            decided += 1
        prefix = processor.tokenizer.decode(new[:decided], skip_special_tokens=True)
        prefixes.append(prefix.rstrip("\ufffd"))
    return prefixes


def make_answer_changing_adapter(model_dir: Path, out_dir: Path, prompt: str, image: Path | None = None,
                                 seeds: range = range(16)) -> Path:  # fmt: skip
    """A random-weight adapter that provably (by transformers + peft) changes the greedy answer to `prompt`.

    How far a random adapter moves a confident model is luck of the seed: one seed may leave a given answer as it
    was. Tests that show "the adapter answered, not the base" take the first seed that changes this very answer.
    """
    base = peft_greedy(model_dir, None, [prompt], image=image)
    for seed in seeds:
        shutil.rmtree(out_dir, ignore_errors=True)
        make_peft_adapter(model_dir, out_dir, seed=seed)
        if peft_greedy(model_dir, out_dir, [prompt], image=image) != base:
            return out_dir
    raise AssertionError(f"no seed in {seeds} gives an adapter that changes the answer {base!r} to {prompt!r}")


def write_raw_adapter(out_dir: Path, config: dict, tensors: dict[str, list[int]]) -> Path:
    """An adapter directory with exactly this config and these tensor shapes (zeros)."""
    import torch
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    base = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], "modules_to_save": None}
    (out_dir / "adapter_config.json").write_text(json.dumps({**base, **config}))
    save_file({name: torch.zeros(shape) for name, shape in tensors.items()}, str(out_dir / "adapter_model.safetensors"))
    return out_dir


def lora_pair(module: str, rank: int, in_features: int, out_features: int) -> dict[str, list[int]]:
    prefix = f"base_model.model.{module}"
    return {f"{prefix}.lora_A.weight": [rank, in_features], f"{prefix}.lora_B.weight": [out_features, rank]}


def copy_adapter(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
