"""Settings of one quantization run: one typed home for defaults and help texts, validated all at once.

Run as: built by `vlmgate quantize` from its flags (each flag's help is the field's description here).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

# Kept in bf16 by default: the LM head (quantizing it costs the most accuracy per byte saved) and every vision
# tower / projector naming scheme of common VLMs (tiny and sensitive; the engine runs it unquantized anyway).
DEFAULT_IGNORE = ["lm_head", "re:.*visual.*", "re:.*vision_tower.*", "re:.*multi_modal_projector.*"]
# The layer class llm-compressor calibrates one at a time, per model_type (None: llm-compressor infers it).
SEQUENTIAL_TARGETS = {
    "qwen2_vl": ["Qwen2VLDecoderLayer"],
    "qwen2_5_vl": ["Qwen2_5_VLDecoderLayer"],
    "qwen3_vl": ["Qwen3VLTextDecoderLayer"],
}


class QuantizeConfig(BaseModel):
    model: Path = Field(description="bf16/fp32 Hugging Face model directory to quantize")
    method: Literal["awq", "gptq", "rtn"] = Field("awq", description="awq, gptq or rtn (data-free round-to-nearest)")
    output: Path = Field(description="directory for the INT4 compressed-tensors checkpoint (vLLM loads it)")
    calibration: Path | None = Field(
        None, description="calibration JSONL (image+text chats) for awq/gptq; default: generated demo-dataset records"
    )
    calibration_samples: int = Field(64, ge=1, description="how many calibration records to use (first N)")
    heldout: Path | None = Field(None, description="held-out JSONL scored on bf16 and INT4 (reference answers last)")
    heldout_limit: int | None = Field(None, ge=1, description="score only the first N held-out records")
    group_size: int = Field(128, description="weights per quantization group (a multiple of 8; 128 is standard)")
    symmetric: bool = Field(False, description="symmetric int4 (no zero point); default asymmetric, more accurate")
    ignore: list[str] = Field(default_factory=lambda: list(DEFAULT_IGNORE), description="modules kept in bf16")
    dtype: Literal["bfloat16", "float16", "float32"] = Field("bfloat16", description="dtype the model is loaded in")
    device: str = Field("auto", description="auto (cuda if available, else cpu), cpu or cuda")
    report_dir: Path | None = Field(None, description="where the report goes (default: the output directory)")
    env_dir: Path | None = Field(None, description="isolated llm-compressor venv (default: a cache dir)")
    overwrite: bool = Field(False, description="replace an existing non-empty output directory")

    def problems(self) -> list[str]:
        """Every problem with these settings, each with the fix (empty when the run can start)."""
        found = []
        config_file = self.model / "config.json"
        if not config_file.is_file():
            found.append(f"--model {self.model}: no config.json there; pass a Hugging Face model directory")
        elif "quantization_config" in json.loads(config_file.read_text()):
            found.append(f"--model {self.model}: already quantized; pass the bf16/fp32 original")
        if self.group_size < 8 or self.group_size % 8:
            found.append(f"--group-size {self.group_size}: must be a positive multiple of 8 (e.g. 32, 64, 128)")
        for flag, path in (("--calibration", self.calibration), ("--heldout", self.heldout)):
            if path is not None and not path.is_file():
                found.append(f"{flag} {path}: file not found")
        if self.output.exists() and any(self.output.iterdir()) and not self.overwrite:
            found.append(f"--output {self.output}: exists and is not empty; choose another or pass --overwrite")
        if self.output.resolve() == self.model.resolve():
            found.append("--output must differ from --model")
        return found

    def sequential_targets(self) -> list[str] | None:
        model_type = json.loads((self.model / "config.json").read_text()).get("model_type")
        return SEQUENTIAL_TARGETS.get(model_type)


def quantization_config(model_dir: str | Path) -> dict | None:
    """The checkpoint's `quantization_config`, or None for a plain (bf16/fp32) model."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return config.get("quantization_config")
