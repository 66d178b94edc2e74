"""Load a base VLM for QLoRA/LoRA training or for inference with an adapter, on CPU or GPU.

QLoRA = the base's linear layers in bitsandbytes nf4 with double quantization, LoRA weights and compute in
float32 (or bf16). LoRA goes on the language model only by default, because vLLM applies LoRA to the language
model only; the vision tower is never quantized (small, and QLoRA papers keep it full precision).

Run as: imported by train.py, evaluate.py and bench.py (no command of its own).
"""

from __future__ import annotations

from pathlib import Path

import vlmgate  # noqa: F401  (installs the torchvision guard before transformers is imported)

import torch  # isort: skip

from vlmgate.finetune.config import VISION_TARGETS, FinetuneConfig

_VISION_ROOTS = ("model.visual.", "visual.")


def load_processor(model_dir: str | Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(model_dir))


def _model_class():
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText


def load_base(model_dir: str | Path, method: str = "lora", compute_dtype: str = "float32"):
    """The base model, frozen; 4-bit nf4 (double quant) for qlora, full precision for lora."""
    dtype = getattr(torch, compute_dtype)
    kwargs = {"dtype": dtype}
    if method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            llm_int8_skip_modules=["lm_head", "model.visual", "visual"],
        )
    if torch.cuda.is_available():  # same code on a GPU box: weights (and 4-bit kernels) on the first GPU
        kwargs["device_map"] = {"": 0}
    model = _model_class().from_pretrained(str(model_dir), **kwargs)
    disable_cpu_inference_repack(model)
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def disable_cpu_inference_repack(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights into its inference-only CPU layout. Returns modules fixed.

    Why: on CPUs with AVX512-BF16, `Linear4bit.forward` in eval mode without grad (a periodic eval) converts its
    weight in place to a packed layout that only an inference kernel understands; later training steps then either
    fail ("a view of a leaf Variable that requires grad is being used in an in-place operation") or silently run
    that kernel, which has no backward, so gradients stop flowing to earlier layers. Training must never allow it.
    """
    count = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def target_module_names(model, cfg: FinetuneConfig) -> list[str]:
    """Full paths of the modules to adapt: cfg.target_modules suffixes inside the language model, plus the
    vision tower's blocks only if cfg.vision_tower_lora (vLLM would ignore those weights)."""
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) and type(module).__name__ not in ("Linear4bit", "Linear8bitLt"):
            continue
        in_vision = name.startswith(_VISION_ROOTS)
        suffixes = VISION_TARGETS if in_vision else cfg.target_modules
        if in_vision and not cfg.vision_tower_lora:
            continue
        if name == "lm_head":
            continue
        if any(name == s or name.endswith("." + s) for s in suffixes):
            names.append(name)
    return names


def add_lora(model, cfg: FinetuneConfig):
    """Wrap the base with fresh LoRA weights (seeded) on the target modules; refuses targets that match nothing."""
    from peft import LoraConfig, get_peft_model

    names = target_module_names(model, cfg)
    if not names:
        raise ValueError(
            f"target_modules {cfg.target_modules} match no linear layer of the language model; "
            "use module name suffixes such as q_proj, v_proj"
        )
    torch.manual_seed(cfg.seed)
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=names, bias="none")
    peft_model = get_peft_model(model, lora)
    disable_cpu_inference_repack(peft_model)
    return peft_model


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_for_inference(model_dir: str | Path, adapter_dir: str | Path | None = None, dtype: str = "float32"):
    """Unquantized base (+ adapter) in eval mode: what an engine serves, whatever the adapter was trained with."""
    model = load_base(model_dir, "lora", dtype)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    return model.eval()
