"""SGLang engine (GPU only): launched as a supervised child process (`python -m sglang.launch_server`) or attached
by URL, with LoRA adapters loaded and unloaded at runtime.

What differs from vLLM, all of it taken from SGLang 0.5.23's source (sglang/srt/entrypoints/http_server.py,
openai/serving_base.py, observability/metrics_collector.py):
- adapters: `POST /load_lora_adapter {"lora_name", "lora_path", "pinned"}` and `POST /unload_lora_adapter
  {"lora_name"}` (no /v1 prefix); the reply is `{"success", "error_message", "loaded_adapters"}`, and success
  false is a failure whatever the HTTP status says;
- selection: `"model": "<served-name>:<adapter>"`. A bare `"model": "<adapter>"` is NOT an error on SGLang: it
  silently serves the base model, so the gateway must always send the qualified name (`request_model_name`);
- metrics (`--enable-metrics`) are named `sglang:*` (`SGLANG_METRIC_NAMES` maps the gateway's names to them);
- the base model takes one slot of the adapter pool (`--max-loras-per-batch` counts base-only requests).

SGLang has no CPU build on PyPI, so this engine runs on GPU hosts only. Its torch pin differs from vLLM's, so give
it an environment of its own (`python -m venv /opt/sglang && /opt/sglang/bin/pip install "sglang[all]==0.5.23"`)
and point `engine.python` at that interpreter, or attach to an SGLang server (`engine: {kind: sglang, url: ...}`).
Example: deploy/examples/sglang.yaml.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from vlmgate.serve.engines.supervised import SupervisedEngine, parse_json
from vlmgate.serve.errors import ConflictError, InvalidRequestError, UpstreamError, from_engine_response

log = logging.getLogger(__name__)

# Gateway metric -> SGLang's Prometheus name (vLLM's names for the same quantities are `vllm:*`).
SGLANG_METRIC_NAMES: dict[str, str] = {
    "time_to_first_token_seconds": "sglang:time_to_first_token_seconds",
    "inter_token_latency_seconds": "sglang:inter_token_latency_seconds",
    "e2e_request_latency_seconds": "sglang:e2e_request_latency_seconds",
    "queue_time_seconds": "sglang:queue_time_seconds",
    "requests_running": "sglang:num_running_reqs",
    "requests_waiting": "sglang:num_queue_reqs",
    "prompt_tokens_total": "sglang:prompt_tokens_total",
    "generation_tokens_total": "sglang:generation_tokens_total",
    "kv_cache_usage": "sglang:token_usage",
    "lora_slots_used": "sglang:lora_pool_slots_used",
}


class SGLangEngine(SupervisedEngine):
    kind = "sglang"
    metric_names = SGLANG_METRIC_NAMES
    # /health answers 200 once the scheduler runs; /v1/models once the tokenizer manager serves.
    ready_paths = ("/health", "/v1/models")

    def request_model_name(self, adapter: str | None) -> str:
        # SGLang reads "<base>:<adapter>"; the bare adapter name would fall back to the base model without a word.
        return f"{self.model_name}:{adapter}" if adapter else self.model_name

    # -- adapters --------------------------------------------------------------------------------------------
    async def load_adapter(self, name: str, path: str, pinned: bool = False) -> None:
        """Load an adapter; pinned ones are never evicted from the GPU pool (SGLang's `pinned`).

        Idempotent: the same name already loaded from the same path (e.g. after a gateway restart) is a success."""
        payload = {"lora_name": name, "lora_path": path, "pinned": pinned}
        try:
            loaded = await self._lora_call("/load_lora_adapter", payload)
        except AdapterStateConflictError as err:
            if _loaded_path(err.loaded.get(name)) == path:
                return
            raise
        if loaded is not None and name not in loaded:
            raise UpstreamError(f"SGLang reported success but does not list adapter '{name}' as loaded: {loaded}")

    async def unload_adapter(self, name: str) -> None:
        await self._lora_call("/unload_lora_adapter", {"lora_name": name})

    async def _lora_call(self, path: str, payload: dict[str, object]) -> dict[str, object] | None:
        """POST an adapter operation and return SGLang's `loaded_adapters`; `success: false` becomes an error."""
        name = str(payload["lora_name"])
        status, body = await self._exchange("POST", path, payload)
        # SGLang 0.5.23 answers a failed operation with 400 and the same reply shape as a success.
        if status not in (200, 400):
            raise from_engine_response(status, body)
        reply = parse_json(body, path)
        if not isinstance(reply, dict) or "success" not in reply:
            raise UpstreamError(f"SGLang answered {path} without a success field: {body[:200]!r}")
        loaded = reply.get("loaded_adapters")
        loaded = loaded if isinstance(loaded, dict) else None
        if not reply["success"] or status != 200:  # older SGLang releases said so with HTTP 200
            raise _lora_error(name, str(reply.get("error_message") or "no reason given"), loaded)
        log.info("SGLang %s %s: loaded adapters now %s", path, name, loaded)
        return loaded

    # -- process -------------------------------------------------------------------------------------------------
    def command(self, port: int) -> list[str]:
        cfg = self.config
        argv = [
            cfg.python or sys.executable, "-m", "sglang.launch_server",
            "--model-path", self.model_path,
            "--served-model-name", self.model_name,
            "--host", self._host,
            "--port", str(port),
            "--enable-lora",
            "--max-lora-rank", str(cfg.max_lora_rank),
            "--lora-target-modules", *cfg.lora_target_modules,
            # +1: the base model occupies a slot of SGLang's adapter pool whenever a batch has base requests.
            "--max-loras-per-batch", str(cfg.max_loras + 1),
            "--lora-eviction-policy", cfg.lora_eviction_policy,
            "--mem-fraction-static", str(cfg.gpu_memory_utilization),
            "--enable-metrics",
        ]  # fmt: skip
        # SGLang evicts on its own beyond --max-loaded-loras; the gateway keeps at most max_loras loaded, and this
        # stays above that, so the gateway's registry and the engine never disagree about what is loaded.
        if cfg.max_loaded_loras is not None:
            argv += ["--max-loaded-loras", str(max(cfg.max_loaded_loras, cfg.max_loras + 1))]
        if cfg.max_model_len:
            argv += ["--context-length", str(cfg.max_model_len)]
        return argv + list(cfg.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if Path(self.model_path).is_dir():
            env.setdefault("HF_HUB_OFFLINE", "1")  # a local model needs no Hub; a Hub id keeps the default
        env.update(self.config.env)
        return env


class AdapterStateConflictError(ConflictError):
    """SGLang refused because of its adapter state (already loaded, not loaded); `loaded` is what it holds."""

    def __init__(self, message: str, loaded: dict[str, object]) -> None:
        super().__init__(message, param="lora_name")
        self.loaded = loaded


def _lora_error(name: str, reason: str, loaded: dict[str, object] | None) -> ConflictError | InvalidRequestError:
    """Already loaded / not loaded are conflicts with the engine's state; anything else is a bad adapter."""
    if any(word in reason.lower() for word in ("already", "not loaded", "does not exist", "not found")):
        return AdapterStateConflictError(f"SGLang could not change adapter '{name}': {reason}", loaded or {})
    return InvalidRequestError(f"SGLang rejected adapter '{name}': {reason}", param="lora_name", code="bad_adapter")


def _loaded_path(entry: object) -> object:
    """The path of one `loaded_adapters` entry: a path (0.5.23), or a LoRARef with `lora_path` (its type allows it)."""
    return entry.get("lora_path") if isinstance(entry, dict) else entry
