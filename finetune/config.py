"""Fine-tuning configuration: one typed home for every setting and its default, loaded from YAML plus overrides.

Defaults are the field's QLoRA recipe for VLMs (rank 64, alpha 128, lr 2e-4, 3 epochs, LoRA on the language model
only). `load_config` validates everything up front and raises one ConfigError listing every problem with the file,
line, field and the fix, so a bad config fails in a second, not after an hour of training.

Run as: python -m vlmgate.finetune.config CONFIG.yaml [key=value ...]   (prints the resolved config)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# The language model's attention and MLP projections in Qwen2/LLaMA-style decoders.
LM_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Qwen2-VL vision blocks; used only with vision_tower_lora (vLLM ignores these weights when serving).
VISION_TARGETS = ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]


class ConfigError(ValueError):
    """Every problem in a config, one per line, each with where it is and how to fix it."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid fine-tuning config:\n  " + "\n  ".join(problems))


class FinetuneConfig(BaseModel):
    """Everything `vlmgate finetune train` needs. Relative paths are relative to the working directory."""

    model_config = ConfigDict(extra="forbid")

    # what to train on
    base_model: str = Field(description="Hugging Face model directory of the base VLM (needs config.json)")
    train_data: str = Field(description="training JSONL (vlmgate format or LLaMA-Factory/ms-swift style)")
    eval_data: str | None = Field(None, description="held-out JSONL; if unset, eval_fraction of train_data is held out")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="share of train_data held out when eval_data is unset")
    output_dir: str = Field("runs/adapter", description="run directory: adapter/, checkpoints/, loss.png, metrics")
    adapter_name: str | None = Field(None, description="adapter name in the manifest (default: output_dir's name)")
    base_model_name: str | None = Field(None, description="name the gateway serves the base as (default: dir name)")

    # method
    method: Literal["qlora", "lora"] = Field("qlora", description="qlora: nf4 double-quant 4-bit base; lora: full")
    rank: int = Field(64, ge=1, le=512, description="LoRA rank r (engines cap it: vLLM --max-lora-rank)")
    alpha: float = Field(128, gt=0, description="LoRA alpha; the update is scaled by alpha/rank")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout")
    target_modules: list[str] = Field(
        default_factory=lambda: list(LM_TARGETS),
        description="module name suffixes to adapt, matched inside the language model only",
    )
    vision_tower_lora: bool = Field(
        False, description="opt-in: also adapt the vision tower (vLLM ignores those weights; recorded in manifest)"
    )
    compute_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="compute dtype; float32 is faster than bf16 autocast on CPUs without AMX"
    )

    # optimisation
    learning_rate: float = Field(2e-4, gt=0, description="AdamW peak learning rate")
    epochs: float = Field(3, gt=0, description="passes over the training data")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (overrides epochs)")
    batch_size: int = Field(4, ge=1, description="examples per forward pass")
    grad_accum: int = Field(1, ge=1, description="forward passes per optimizer step")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="share of steps with linear warm-up")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    max_length: int = Field(2048, ge=16, description="max tokens per example (image tokens included)")
    seed: int = Field(0, description="seed for data order, LoRA init and dropout: same seed, same adapter")
    num_threads: int | None = Field(
        None, ge=1, description="CPU threads for torch (default: torch's choice); 1 can be faster on a busy machine"
    )

    # bookkeeping
    eval_every_steps: int = Field(50, ge=0, description="held-out loss every N steps (0: only at the end)")
    eval_max_examples: int = Field(64, ge=1, description="held-out examples used for the periodic eval loss")
    save_every_steps: int = Field(50, ge=0, description="checkpoint every N steps (0: none); resume picks it up")
    max_new_tokens: int = Field(32, ge=1, description="greedy tokens generated per example when evaluating")

    @model_validator(mode="after")
    def _targets_known(self) -> FinetuneConfig:
        if not self.target_modules:
            raise ValueError("target_modules is empty; use e.g. [q_proj, v_proj] or leave it unset for all 7")
        return self

    def resolve_paths(self, base_dir: Path) -> FinetuneConfig:
        """Make relative paths absolute, so checkpoints and manifests do not depend on where a resume runs."""
        fields = {}
        for name in ("base_model", "train_data", "eval_data", "output_dir"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_absolute():
                fields[name] = str((base_dir / value).resolve())
        return self.model_copy(update=fields)

    @property
    def name(self) -> str:
        return self.adapter_name or Path(self.output_dir).name


def _key_lines(text: str) -> dict[str, int]:
    """Line number of each top-level key, so errors can point into the YAML file."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings from the command line; values parsed as YAML scalars/lists (`rank=16`, `x=[a,b]`)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError([f"override {pair!r}: expected key=value, e.g. rank=16"])
        out[key.strip()] = yaml.safe_load(value)
    return out


def _check_paths(cfg: FinetuneConfig, where: dict[str, str]) -> list[str]:
    problems = []
    if not (Path(cfg.base_model) / "config.json").is_file():
        problems.append(
            f"{where['base_model']}base_model: {cfg.base_model} has no config.json; point it at a Hugging Face "
            "model directory (e.g. finetune/demo/vlmgate-demo)"
        )
    for name in ("train_data", "eval_data"):
        value = getattr(cfg, name)
        if value is not None and not Path(value).is_file():
            problems.append(f"{where[name]}{name}: file {value} does not exist")
    return problems


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, check_paths: bool = True
) -> FinetuneConfig:
    """YAML file (optional) + overrides -> validated config, or ConfigError listing every problem at once."""
    # Relative paths resolve against the working directory (as in torchtune/axolotl): example configs are run from
    # the repository root, as their first line says.
    text, base_dir, label = "", Path.cwd(), "<overrides>"
    if path is not None:
        path = Path(path)
        label = str(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from exc
    try:
        raw = yaml.safe_load(text) if text else {}
    except yaml.YAMLError as exc:
        raise ConfigError([f"{label}: not valid YAML: {exc}"]) from exc
    if not isinstance(raw, dict):
        raise ConfigError([f"{label}: expected a mapping of settings, got {type(raw).__name__}"])
    lines = _key_lines(text)
    merged = {**raw, **(overrides or {})}

    def where(field: str) -> str:
        if overrides and field in overrides:
            return "<command line>: "
        return f"{label}:{lines[field]}: " if field in lines else f"{label}: "

    try:
        cfg = FinetuneConfig.model_validate(merged)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "<root>"
            hint = ""
            if err["type"] == "extra_forbidden":
                hint = " (unknown setting; run `vlmgate finetune train --help-config` for the list)"
            elif err["type"] == "missing":
                hint = f" ({FinetuneConfig.model_fields[field].description})"
            loc = ".".join(map(str, err["loc"]))
            problems.append(f"{where(field)}{loc}: {err['msg']}{hint}")
        raise ConfigError(problems) from exc
    cfg = cfg.resolve_paths(base_dir)
    if check_paths and (problems := _check_paths(cfg, {f: where(f) for f in FinetuneConfig.model_fields})):
        raise ConfigError(problems)
    return cfg


def describe_fields() -> str:
    """One line per setting: name, default, help. Used by --help-config."""
    lines = []
    for name, info in FinetuneConfig.model_fields.items():
        default = "required" if info.is_required() else repr(info.get_default(call_default_factory=True))
        lines.append(f"  {name:<18} {default:<24} {info.description}")
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        config = load_config(sys.argv[1], parse_overrides(sys.argv[2:]))
    except ConfigError as error:
        print(error, file=sys.stderr)
        raise SystemExit(2) from None
    print(yaml.safe_dump(config.model_dump(), sort_keys=False))
