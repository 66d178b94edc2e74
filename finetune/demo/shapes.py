"""Synthetic scenes for the demo VLM: coloured shapes on varied backgrounds, sampled and drawn deterministically.

A scene is 1-4 identical shapes (one colour, one kind, sizes may differ) placed in distinct cells of a 3x3 grid,
so every question about it has exactly one right answer: its colour, its shape, how many there are and, for a
single shape, where it is. `sample_scene(rng)` draws the training distribution; `sample_scene(rng, style="ood")`
draws images the model never trains on (flat plain backgrounds, shapes centred in their cell, sizes outside the
training range, lighter/darker shades). `render(scene)` turns a scene into a PIL image.

Import it to reuse the images elsewhere (fine-tune domain tasks, load tests):

    rng = numpy.random.default_rng(0)
    scene = sample_scene(rng)
    image = render(scene)          # 112x112 RGB, 16 image tokens for the demo model
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 112  # pixels; 112 = 8x8 patches of 14 = 4x4 merged image tokens
GRID = 3  # shapes sit in the cells of a GRID x GRID layout
MAX_COUNT = 4

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (35, 75, 215),
    "yellow": (235, 205, 25),
    "purple": (135, 55, 185),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
# Row-major names of the 3x3 cells; the answer to "where is it?".
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
COUNT_WORDS = ("zero", "one", "two", "three", "four", "five")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}

# Shape extent in pixels, training images. From 18: a shape of 14-17 px is about one 14-px patch, and the demo
# model's tower (Qwen2-VL's 14-px patches merged 2x2, all vLLM can serve) told circles from squares that small at
# 0.73-0.81 (largest shape in the image 14-19 px; 0.96-0.995 from 20 px). With (14, 30) the recipe's descriptions,
# which need colour, shape and count all right, stayed at 0.91-0.94 over nine runs; with (18, 30), 0.950 (seed 0,
# the defaults) and 0.964 (a 4-layer vision tower). Smaller shapes are in the OOD set, so the card says how the model
# does on them.
TRAIN_SIZE_RANGE = (18, 30)
OOD_SIZES = ((12, 17), (31, 34))  # smaller or larger than anything seen in training


@dataclass(frozen=True)
class Scene:
    """Everything needed to draw an image and to answer any question about it."""

    colour: str
    shape: str
    cells: tuple[int, ...]  # occupied cells, row-major 0..8, one shape each
    centres: tuple[tuple[float, float], ...]  # shape centres in pixels (x, y)
    sizes: tuple[int, ...]  # shape extents in pixels
    rgb: tuple[int, int, int]  # the shade actually drawn
    background: str  # "noise", "gradient", "plain"
    bg_rgb: tuple[tuple[int, int, int], tuple[int, int, int]]  # base colours of the background
    bg_seed: int  # seeds the background texture so that render() is a pure function

    @property
    def count(self) -> int:
        return len(self.cells)

    @property
    def position(self) -> str | None:
        """The cell name of a single shape; None when there are several."""
        return POSITIONS[self.cells[0]] if self.count == 1 else None

    def describe(self) -> str:
        """Short description: 'a red circle', 'three blue squares'."""
        if self.count == 1:
            article = "an" if self.colour[0] in "aeiou" else "a"
            return f"{article} {self.colour} {self.shape}"
        return f"{COUNT_WORDS[self.count]} {self.colour} {PLURALS[self.shape]}"


def mirror(scene: Scene) -> Scene:
    """The scene flipped left-right (a free augmentation: flip the pixels, and the answers follow this)."""
    cells = tuple(row * GRID + (GRID - 1 - col) for row, col in (divmod(c, GRID) for c in scene.cells))
    centres = tuple((round(IMAGE_SIZE - x, 2), y) for x, y in scene.centres)
    return replace(scene, cells=cells, centres=centres)


def _shade(rng: np.random.Generator, base: tuple[int, int, int], ood: bool) -> tuple[int, int, int]:
    """A nearby shade of a base colour; OOD shades are mixed further towards white or black."""
    rgb = np.array(base, dtype=float)
    amount = rng.uniform(0.25, 0.35) if ood else rng.uniform(0.0, 0.22)
    target = 255.0 if rng.random() < 0.5 else 0.0
    rgb = rgb + (target - rgb) * amount
    if not ood:
        rgb = rgb + rng.uniform(-18, 18, size=3)
    return tuple(int(v) for v in np.clip(rgb, 0, 255))


def _background(rng: np.random.Generator, ood: bool) -> tuple[str, tuple, int]:
    """Low-saturation backgrounds so that every object colour stays readable against them."""
    if ood:
        grey = int(rng.choice([255, 245, 230, 40, 0]))
        return "plain", ((grey, grey, grey), (grey, grey, grey)), 0
    kind = str(rng.choice(["noise", "gradient"]))

    def muted() -> tuple[int, int, int]:
        level = rng.uniform(40, 230)
        tint = rng.uniform(-22, 22, size=3)
        return tuple(int(v) for v in np.clip(level + tint, 0, 255))

    return kind, (muted(), muted()), int(rng.integers(2**31))


def sample_scene(
    rng: np.random.Generator,
    *,
    count: int | None = None,
    colour: str | None = None,
    shape: str | None = None,
    style: str = "train",
) -> Scene:
    """Draw a random scene; fix any of count/colour/shape to balance a dataset. style: 'train' or 'ood'."""
    if style not in ("train", "ood"):
        raise ValueError(f"style must be 'train' or 'ood', got {style!r}")
    ood = style == "ood"
    count = int(count if count is not None else rng.integers(1, MAX_COUNT + 1))
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"count must be 1..{MAX_COUNT}, got {count}")
    colour = colour or str(rng.choice(list(COLOURS)))
    shape = shape or str(rng.choice(SHAPES))
    cells = tuple(sorted(int(c) for c in rng.choice(GRID * GRID, size=count, replace=False)))
    cell_px = IMAGE_SIZE / GRID
    centres, sizes = [], []
    for cell in cells:
        if ood:
            lo, hi = OOD_SIZES[int(rng.integers(2))]
        else:
            lo, hi = TRAIN_SIZE_RANGE
        size = int(rng.integers(lo, hi + 1))
        row, col = divmod(cell, GRID)
        # Keep the whole shape inside its cell (shapes never overlap or cross into a neighbour's region);
        # OOD shapes sit exactly in the middle of the cell.
        slack = 0.0 if ood else max(0.0, (cell_px - size) / 2 - 1.5)
        cx = (col + 0.5) * cell_px + rng.uniform(-slack, slack)
        cy = (row + 0.5) * cell_px + rng.uniform(-slack, slack)
        centres.append((round(cx, 2), round(cy, 2)))
        sizes.append(size)
    background, bg_rgb, bg_seed = _background(rng, ood)
    return Scene(
        colour=colour,
        shape=shape,
        cells=cells,
        centres=tuple(centres),
        sizes=tuple(sizes),
        rgb=_shade(rng, COLOURS[colour], ood),
        background=background,
        bg_rgb=bg_rgb,
        bg_seed=bg_seed,
    )


def _draw_background(scene: Scene, size: int) -> np.ndarray:
    a, b = (np.array(c, dtype=float) for c in scene.bg_rgb)
    if scene.background == "plain":
        return np.broadcast_to(a, (size, size, 3)).copy()
    rng = np.random.default_rng(scene.bg_seed)
    if scene.background == "gradient":
        t = np.linspace(0.0, 1.0, size)
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * t[None, :] + np.sin(angle) * t[:, None]
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
        img = a + (b - a) * ramp[..., None]
    else:  # blotchy noise: a coarse random field, upsampled, plus fine grain
        coarse = rng.uniform(0, 1, size=(6, 6))
        field = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC))
        img = a + (b - a) * (field[..., None] / 255.0)
    return img + rng.normal(0, 5, size=(size, size, 3))


def draw_shapes(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """The scene's shapes alone on a transparent RGBA layer (antialiased: drawn at 3x and downsampled)."""
    scale = 3
    canvas = Image.new("RGBA", (size * scale, size * scale), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    factor = scale * size / IMAGE_SIZE
    for (cx, cy), extent in zip(scene.centres, scene.sizes, strict=True):
        x, y, r = cx * factor, cy * factor, extent * factor / 2
        if scene.shape == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(*scene.rgb, 255))
        elif scene.shape == "square":
            s = r * 0.9  # a square of the same extent looks bigger than a circle; even out the area a little
            draw.rectangle([x - s, y - s, x + s, y + s], fill=(*scene.rgb, 255))
        else:
            half = r * 1.04  # a near-equilateral triangle pointing up
            draw.polygon([(x, y - r), (x + half, y + r * 0.8), (x - half, y + r * 0.8)], fill=(*scene.rgb, 255))
    return canvas.reduce(scale)  # box filter: cheap antialiasing


def draw_background(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """The scene's background alone (RGB)."""
    return Image.fromarray(np.clip(_draw_background(scene, size), 0, 255).astype(np.uint8), "RGB")


def composite(shapes: Image.Image, background: Image.Image) -> Image.Image:
    """A shape layer over a background: render() is composite(draw_shapes(s), draw_background(s))."""
    out = background.copy()
    out.paste(shapes, (0, 0), shapes)
    return out


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw the scene. Pure function of the scene."""
    return composite(draw_shapes(scene, size), draw_background(scene, size))


def _draw_array(draw: Callable[[Scene], Image.Image], scenes: Sequence[Scene]) -> np.ndarray:
    return np.stack([np.asarray(draw(s)) for s in scenes])


def render_many(
    scenes: Sequence[Scene], draw: Callable[[Scene], Image.Image] = render, progress: str | None = None
) -> np.ndarray:
    """draw (a module-level function: render, draw_shapes, draw_background) over many scenes: one uint8 array,
    (N, size, size, channels). Big lists are drawn by one forked process per core, the results in order: drawing is
    pure Python and numpy on one core, and the 8000 images of the demo's training pool took 12 s alone.
    progress: a tqdm description to show a bar (None: quiet)."""
    from tqdm import tqdm

    if not scenes:
        return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(cores, len(scenes) // 500)
    chunks = [scenes[i : i + 250] for i in range(0, len(scenes), 250)]
    bar = tqdm(total=len(scenes), desc=progress, leave=False, disable=progress is None)
    parts = []
    if workers < 2:
        for chunk in chunks:
            parts.append(_draw_array(draw, chunk))
            bar.update(len(chunk))
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            for part in pool.map(_draw_array, [draw] * len(chunks), chunks):
                parts.append(part)
                bar.update(len(part))
    bar.close()
    return np.concatenate(parts)
