"""What to send and when: the arrival schedule, the model/adapter mix, and the request bodies.

Everything random is drawn up front from one seeded generator, so a workload is reproducible and building it
costs nothing while the clock runs (images are PNG-encoded here, before the test starts).

    specs = build_requests(config, count=100)
    offsets = arrival_offsets(rate=4.0, arrival="gamma", burstiness=0.5, count=100, rng=np.random.default_rng(0))
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

import numpy as np

from vlmgate.loadtest.config import ImageSize, LoadTestConfig, ModelWeight
from vlmgate.loadtest.dataset import load_chat_dataset

# Unique images up to this many per size; beyond it they repeat (a server-side multimodal cache may then hit).
IMAGE_POOL_PER_SIZE = 256
# fmt: off
_WORDS = (
    "image", "shape", "colour", "circle", "square", "triangle", "red", "green", "blue", "yellow", "left", "right",
    "top", "bottom", "small", "large", "count", "describe", "what", "where", "how", "many", "is", "the", "a", "of",
    "in", "on", "near", "above", "below", "between", "bright", "dark", "scene", "object", "picture", "question",
    "answer", "detail", "texture", "edge", "corner", "pattern", "line", "dot", "background", "foreground", "centre",
    "view",
)
# fmt: on


@dataclass(frozen=True)
class RequestSpec:
    """One request body, ready to send."""

    index: int
    model: str
    messages: list[dict]
    image_count: int


def model_shares(models: list[ModelWeight], popularity: str, zipf_s: float) -> list[float]:
    """Normalised request shares: explicit weights win; otherwise uniform or Zipf by position (1/k^s)."""
    if all(m.weight is None for m in models):
        raw = [1.0 if popularity == "uniform" else 1.0 / (k**zipf_s) for k in range(1, len(models) + 1)]
    else:
        raw = [m.weight if m.weight is not None else 1.0 for m in models]
    total = sum(raw)
    return [w / total for w in raw]


def arrival_offsets(
    *,
    rate: float,
    arrival: str,
    burstiness: float,
    rng: np.random.Generator,
    count: int | None = None,
    duration_s: float | None = None,
) -> list[float]:
    """Send times in seconds from the start: `count` of them, or as many as fall inside `duration_s`.

    Poisson = exponential gaps; gamma gaps have shape `burstiness` and mean 1/rate (shape 1 is Poisson, like
    vLLM's --burstiness); constant = evenly spaced. The first request goes at t=0.
    """
    limit = count if count is not None else math.inf
    offsets: list[float] = []
    now = 0.0
    while len(offsets) < limit:
        if duration_s is not None and now >= duration_s:
            break
        offsets.append(now)
        if arrival == "constant":
            now = len(offsets) / rate  # not a running sum, which would drift by rounding
        else:
            shape = 1.0 if arrival == "poisson" else burstiness
            now += float(rng.gamma(shape, 1.0 / (rate * shape)))
    return offsets


def _png_data_url(size: ImageSize, rng: np.random.Generator) -> str:
    from PIL import Image, ImageDraw

    background = tuple(int(v) for v in rng.integers(0, 256, 3))
    image = Image.new("RGB", (size.width, size.height), background)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, x1 = sorted(int(v) for v in rng.integers(0, size.width, 2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, size.height, 2))
        draw.rectangle((x0, y0, x1 + 1, y1 + 1), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    # A little noise so every image is distinct and compresses like a photo rather than a flat drawing.
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-8, 9, (size.height, size.width, 3))
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class _ImagePool:
    """Encodes each image once, lazily, then reuses it after IMAGE_POOL_PER_SIZE per size."""

    def __init__(self, sizes: list[ImageSize], rng: np.random.Generator):
        self.sizes, self.rng = sizes, rng
        weights = np.array([s.weight for s in sizes])
        self.shares = weights / weights.sum()
        self.cache: dict[int, list[str]] = {i: [] for i in range(len(sizes))}
        self.drawn: dict[int, int] = dict.fromkeys(range(len(sizes)), 0)

    def draw(self) -> str:
        which = int(self.rng.choice(len(self.sizes), p=self.shares))
        pool, n = self.cache[which], self.drawn[which]
        self.drawn[which] += 1
        if n < IMAGE_POOL_PER_SIZE:
            pool.append(_png_data_url(self.sizes[which], self.rng))
            return pool[-1]
        return pool[n % IMAGE_POOL_PER_SIZE]


def synthetic_messages(words: int, images: list[str], rng: np.random.Generator) -> list[dict]:
    """One user turn: the images, then a random word sequence (random, so no two prompts share a prefix)."""
    text = "Describe the picture. " + " ".join(rng.choice(_WORDS, size=words))
    if not images:
        return [{"role": "user", "content": text}]
    parts: list[dict] = [{"type": "image_url", "image_url": {"url": url}} for url in images]
    parts.append({"type": "text", "text": text})
    return [{"role": "user", "content": parts}]


def build_requests(config: LoadTestConfig, count: int, served_models: list[str] | None = None) -> list[RequestSpec]:
    """`count` request bodies for `config` (models fall back to `served_models[0]` when none were given)."""
    # Independent streams per concern, so a longer run starts with exactly the requests of a shorter one.
    pick_rng, prompt_rng, image_rng = (np.random.default_rng([config.seed, k]) for k in range(3))
    models = config.models or [ModelWeight(name=(served_models or ["default"])[0])]
    shares = model_shares(models, config.popularity, config.zipf_s)
    picks = pick_rng.choice(len(models), size=count, p=shares)
    if config.dataset is not None:
        conversations = load_chat_dataset(config.dataset)
        # Whole permutations back to back: every conversation is used once before any repeats (a repeat could
        # hit the server's prefix cache and look faster than it is).
        rounds = -(-count // len(conversations))
        order = np.concatenate([prompt_rng.permutation(len(conversations)) for _ in range(rounds)])
        return [
            RequestSpec(i, models[picks[i]].name, conversations[order[i]].messages, conversations[order[i]].images)
            for i in range(count)
        ]
    pool = _ImagePool(config.image_sizes, image_rng)
    specs = []
    for i in range(count):
        images = [pool.draw() for _ in range(config.images_per_request)]
        specs.append(
            RequestSpec(
                i, models[picks[i]].name, synthetic_messages(config.prompt_words, images, prompt_rng), len(images)
            )
        )
    return specs
