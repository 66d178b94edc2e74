"""Generic OpenAI-compatible upstream: any server with `/v1/chat/completions` and `/v1/models` (TGI, Ollama,
trtllm-serve, a remote vLLM or SGLang, ...), attached by URL and never launched.

Requests reach it through the same validation, admission, metrics and SLOs as any engine. The model id sent
upstream is the model's `path` (what the upstream calls it, e.g. `llava:7b` on Ollama); clients use `name`.
Such servers have no runtime adapter API the gateway can rely on, so every adapter operation answers a 400
(`AdaptersUnsupportedError`) that says so.

Configure it with `engine: {kind: openai, url: http://host:port}`; example: deploy/examples/openai-upstream.yaml.
"""

from __future__ import annotations

from vlmgate.serve.engines.base import EngineCapabilities, EngineStartError
from vlmgate.serve.engines.supervised import SupervisedEngine, parse_json
from vlmgate.serve.errors import AdaptersUnsupportedError, APIError


class OpenAIUpstreamEngine(SupervisedEngine):
    kind = "openai"
    # Only /v1/models is common to every OpenAI-compatible server (Ollama, for one, has no /health).
    ready_paths = ("/v1/models",)

    @property
    def capabilities(self) -> EngineCapabilities:
        return EngineCapabilities(
            runtime_lora=False,
            max_model_len=self.config.max_model_len,
            max_images_per_prompt=self.limits.max_images_per_request,
        )

    def request_model_name(self, adapter: str | None) -> str:
        if adapter:
            raise self._no_adapters(f"use adapter '{adapter}'")
        return self.model_path

    async def load_adapter(self, name: str, path: str, pinned: bool = False) -> None:
        raise self._no_adapters(f"load adapter '{name}'")

    async def unload_adapter(self, name: str) -> None:
        raise self._no_adapters(f"unload adapter '{name}'")

    async def after_ready(self) -> None:
        """Fail at start-up, not on the first request, when the upstream does not serve the configured model."""
        try:
            listing = parse_json(await self._get("/v1/models"), "/v1/models")
        except APIError as err:
            raise EngineStartError(f"upstream {self.base_url} did not list its models: {err.message}") from None
        data = listing.get("data") if isinstance(listing, dict) else None
        served = [m.get("id") for m in data or [] if isinstance(m, dict)]
        if self.model_path not in served:
            raise EngineStartError(
                f"upstream {self.base_url} does not serve '{self.model_path}' (it serves: "
                f"{', '.join(map(str, served)) or 'nothing'}). Set the model's path to one of these ids."
            )

    def _no_adapters(self, action: str) -> AdaptersUnsupportedError:
        return AdaptersUnsupportedError(
            f"Cannot {action}: base model '{self.model_name}' is served by a generic OpenAI-compatible upstream "
            f"({self.base_url}), which has no runtime adapters. Serve it on a vllm or sglang engine to use adapters.",
            param="model",
        )
