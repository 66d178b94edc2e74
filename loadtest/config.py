"""Typed configuration of a load test: one home for every default and its help text.

`LoadTestConfig` is built by `vlmgate loadtest` (loadtest/cli.py) from its flags; the helpers here parse the
compact flag syntaxes (`--model a=3`, `--image-size 224x224:3`, `--slo ttft_ms=500,tpot_ms=33`).
`ConfigError` collects every problem so the user sees them all at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator


class ConfigError(ValueError):
    """Every problem found in a configuration, reported together."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(f"- {e}" for e in errors))


class ModelWeight(BaseModel):
    name: str = Field(description="model or adapter name sent as the request's `model`")
    weight: float | None = Field(None, description="relative share of requests; None = set by --popularity")


class ImageSize(BaseModel):
    width: int = Field(gt=0, description="image width in pixels")
    height: int = Field(gt=0, description="image height in pixels")
    weight: float = Field(1.0, gt=0, description="relative share of images drawn at this size")


class SLO(BaseModel):
    """Per-request latency targets; a request is 'good' when it succeeded and meets every target that is set."""

    ttft_ms: float | None = Field(None, gt=0, description="time to first token")
    tpot_ms: float | None = Field(None, gt=0, description="time per output token, first token excluded")
    itl_ms: float | None = Field(None, gt=0, description="worst inter-token latency of the request")
    e2e_ms: float | None = Field(None, gt=0, description="end-to-end latency")

    def targets(self) -> dict[str, float]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class LoadTestConfig(BaseModel):
    url: str = Field(description="base URL of the OpenAI-compatible server, with or without /v1")
    models: list[ModelWeight] = Field(default_factory=list, description="model/adapter mix; empty = first served")
    popularity: Literal["uniform", "zipf"] = Field("uniform", description="share of models without a weight")
    zipf_s: float = Field(1.0, gt=0, description="Zipf exponent: model k (1-based, in order) gets 1/k^s")
    concurrency: int | None = Field(None, gt=0, description="closed loop: N users, each sends after its reply")
    rate: float | None = Field(None, gt=0, description="open loop: mean request arrivals per second")
    arrival: Literal["poisson", "gamma", "constant"] = Field("poisson", description="inter-arrival distribution")
    burstiness: float = Field(1.0, gt=0, description="gamma shape: 1 = Poisson, <1 burstier, >1 smoother")
    max_concurrency: int | None = Field(None, gt=0, description="open loop: cap on requests in flight")
    num_requests: int | None = Field(None, gt=0, description="measured requests (default 100 without --duration)")
    duration_s: float | None = Field(None, gt=0, description="stop sending after this many seconds")
    warmup_requests: int = Field(2, ge=0, description="requests sent one by one before measuring, not counted")
    dataset: Path | None = Field(None, description="JSONL in the project's chat format; default synthetic prompts")
    prompt_words: int = Field(64, gt=0, description="synthetic prompt length in words (~1-2 tokens each)")
    images_per_request: int = Field(0, ge=0, description="synthetic PNG images added to each synthetic prompt")
    image_sizes: list[ImageSize] = Field(
        default_factory=lambda: [ImageSize(width=224, height=224)], description="image size mix"
    )
    max_tokens: int = Field(64, gt=0, description="max_tokens of every request")
    ignore_eos: bool = Field(False, description="send vLLM's ignore_eos so every reply has max_tokens tokens")
    temperature: float = Field(0.0, ge=0, description="sampling temperature")
    api_key: str | None = Field(None, description="bearer token; default $VLMGATE_API_KEY or $OPENAI_API_KEY")
    timeout_s: float = Field(300.0, gt=0, description="per-request timeout")
    slo: SLO = Field(default_factory=SLO, description="latency targets for goodput and the exit code")
    attainment: float = Field(0.95, gt=0, le=1, description="share of requests that must meet the SLO")
    scrape_metrics: bool = Field(True, description="scrape the server's /metrics before and after")
    metrics_url: str | None = Field(None, description="Prometheus endpoint to scrape; default URL/metrics")
    seed: int = Field(0, description="seed of every random draw (arrivals, models, prompts, images)")

    @model_validator(mode="after")
    def _check(self) -> LoadTestConfig:
        errors = []
        if self.concurrency is not None and self.rate is not None:
            errors.append("give either --concurrency (closed loop) or --rate (open loop), not both")
        if self.max_concurrency is not None and self.rate is None:
            errors.append("--max-concurrency caps an open loop: use it with --rate")
        if not self.url.startswith(("http://", "https://")):
            errors.append(f"--url must start with http:// or https://, got {self.url!r}")
        if self.dataset is not None and not self.dataset.is_file():
            errors.append(f"--dataset {self.dataset} does not exist")
        if self.dataset is not None and self.images_per_request:
            errors.append("--images-per-request applies to synthetic prompts; a dataset brings its own images")
        if errors:
            raise ConfigError(errors)
        if self.concurrency is None and self.rate is None:
            self.concurrency = 1
        if self.num_requests is None and self.duration_s is None:
            self.num_requests = 100
        if self.api_key is None:
            self.api_key = os.environ.get("VLMGATE_API_KEY") or os.environ.get("OPENAI_API_KEY")
        return self

    @property
    def base_url(self) -> str:
        url = self.url.rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url

    @property
    def mode(self) -> str:
        return "closed" if self.rate is None else "open"


def parse_model(text: str) -> ModelWeight:
    """`name` or `name=weight` (weights are relative shares)."""
    name, sep, weight = text.rpartition("=") if "=" in text else (text, "", "")
    if not sep:
        return ModelWeight(name=text)
    try:
        value = float(weight)
    except ValueError:
        raise ValueError(f"--model {text!r}: weight {weight!r} is not a number (use NAME or NAME=WEIGHT)") from None
    if value <= 0 or not name:
        raise ValueError(f"--model {text!r}: need a name and a positive weight, e.g. my-adapter=2")
    return ModelWeight(name=name, weight=value)


def parse_image_sizes(text: str) -> list[ImageSize]:
    """`WxH[:weight],...`, e.g. `224x224:3,448x336:1`."""
    sizes = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        dims, _, weight = part.partition(":")
        try:
            width, height = (int(v) for v in dims.lower().split("x"))
            sizes.append(ImageSize(width=width, height=height, weight=float(weight) if weight else 1.0))
        except ValueError:
            raise ValueError(f"--image-size {part!r}: expected WIDTHxHEIGHT[:WEIGHT], e.g. 224x224:3") from None
    if not sizes:
        raise ValueError("--image-size needs at least one WIDTHxHEIGHT")
    return sizes


def parse_slo(text: str) -> SLO:
    """`ttft_ms=500,tpot_ms=33,e2e_ms=4000,itl_ms=100` (any subset)."""
    values: dict[str, float] = {}
    known = set(SLO.model_fields)
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise ValueError(f"--slo {part!r}: expected KEY=MILLISECONDS with KEY in {sorted(known)}")
        try:
            values[key] = float(value)
        except ValueError:
            raise ValueError(f"--slo {part!r}: {value!r} is not a number of milliseconds") from None
    return SLO(**values)
