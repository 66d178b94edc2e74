"""Engines behind one interface (base.Engine): vLLM launched or attached; SGLang and generic upstreams to come."""

from __future__ import annotations

from vlmgate.serve.config import LimitsConfig, ModelConfig
from vlmgate.serve.engines.base import Engine


def create_engine(model: ModelConfig, limits: LimitsConfig) -> Engine:
    """The engine object for one configured base model (not started)."""
    kind = model.engine.kind
    if kind == "vllm":
        from vlmgate.serve.engines.vllm import VLLMEngine

        return VLLMEngine(model.name or model.path, model.path, model.engine, limits)
    raise NotImplementedError(f"engine kind {kind!r} is not available yet; use 'vllm'")
