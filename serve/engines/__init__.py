"""Engines behind one interface (base.Engine): vLLM and SGLang (launched or attached), any OpenAI-compatible
upstream (attached). `create_engine` is the only place that branches on the configured engine kind.
"""

from __future__ import annotations

from vlmgate.serve.config import LimitsConfig, ModelConfig
from vlmgate.serve.engines.base import Engine


def create_engine(model: ModelConfig, limits: LimitsConfig) -> Engine:
    """The engine object for one configured base model (not started)."""
    kind = model.engine.kind
    name = model.name or model.path
    if kind == "vllm":
        from vlmgate.serve.engines.vllm import VLLMEngine

        return VLLMEngine(name, model.path, model.engine, limits)
    if kind == "sglang":
        from vlmgate.serve.engines.sglang import SGLangEngine

        return SGLangEngine(name, model.path, model.engine, limits)
    if kind == "openai":
        from vlmgate.serve.engines.openai_upstream import OpenAIUpstreamEngine

        return OpenAIUpstreamEngine(name, model.path, model.engine, limits)
    raise ValueError(f"unknown engine kind {kind!r}; use vllm, sglang or openai")
