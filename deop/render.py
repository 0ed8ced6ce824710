"""Everything that turns a result into pictures (file formats are ``deop.export``'s), kept apart from the
models so the CLI, the app and the tests draw exactly the same thing without loading a network.

Label maps are (H, W) int arrays, -1 = unlabelled, otherwise an index into ``class_names``; images are
(H, W, 3) uint8 RGB. All per-pixel work is vectorised; loops run over classes or legend entries only.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import hsv_to_rgb
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

UNLABELLED = -1
OUTLINE_COLOR = (255, 255, 255)
BANNER_COLOR = (200, 30, 30)
_MAX_SHOWN_NAME = 40

# Golden-ratio hue steps with a 3-cycle of saturation/value: neighbouring indices (often related classes)
# differ in brightness as well as hue. Saturation >= 0.5 and value >= 0.75 keep every colour away from
# black and white, so labels stay visible on photos; the constants were picked for the widest minimum RGB
# distance over the first 20 classes.
_HUE0, _GOLDEN = 0.96, 0.6180339887498949
_SAT, _VAL = (0.7, 0.95, 0.5), (0.9, 0.75, 1.0)


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 colours; class i gets the same colour whatever n is, so colours survive adding classes."""
    i = np.arange(max(int(n), 0))
    hsv = np.stack([(_HUE0 + i * _GOLDEN) % 1.0, np.take(_SAT, i % 3), np.take(_VAL, i % 3)], axis=-1)
    return np.round(hsv_to_rgb(hsv) * 255).astype(np.uint8).reshape(-1, 3)


# ----------------------------------------------------------------------------------------------- helpers


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """Accepts grey and RGBA too, because callers pass whatever PIL or Gradio handed them."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    return image[..., :3]


def check_labels(label_map: np.ndarray, n_classes: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
    label_map = np.asarray(label_map)
    if label_map.ndim != 2 or not np.issubdtype(label_map.dtype, np.integer):
        raise ValueError(f"expected an (H, W) integer label map, got {label_map.dtype} {label_map.shape}")
    if shape is not None and label_map.shape != shape:
        raise ValueError(f"label map {label_map.shape} does not match the image {shape}")
    if label_map.size and (label_map.min() < UNLABELLED or label_map.max() >= n_classes):
        lo, hi = label_map.min(), label_map.max()
        raise ValueError(f"label map values must lie in [-1, {n_classes}), got [{lo}, {hi}]")
    # int32 (what results give) is kept: a copy of a 48-megapixel map to int64 costs 0.1 s and 384 MB; narrower
    # types are widened, since callers compute with the labels (+1, 65535 for unlabelled)
    return label_map if label_map.dtype in (np.int32, np.int64) else label_map.astype(np.int64)


def _boundaries(values: np.ndarray) -> np.ndarray:
    """Pixels whose 4-neighbourhood holds a different value; the image border is not an edge."""
    edge = np.zeros(values.shape, dtype=bool)
    d = values[:, 1:] != values[:, :-1]
    edge[:, 1:] |= d
    edge[:, :-1] |= d
    d = values[1:] != values[:-1]
    edge[1:] |= d
    edge[:-1] |= d
    return edge


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    for _ in range(radius):
        grown = mask.copy()
        grown[1:] |= mask[:-1]
        grown[:-1] |= mask[1:]
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        mask = grown
    return mask


def _blend(base: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    """The one blend formula everything (and the tests) use, so "exact colour" has a single meaning."""
    mixed = (1.0 - alpha) * base.astype(np.float64) + alpha * color.astype(np.float64)
    return np.round(mixed).astype(np.uint8)


def font_size(width: int) -> int:
    """Readable at 640 px (18 px text) without swamping thumbnails or 4K photos."""
    return int(np.clip(round(width / 36), 12, 40))


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """matplotlib's DejaVu Sans first: Pillow's own default font lacks even accented Latin letters, and
    class names come from users. Glyphs neither has (CJK, emoji) draw as boxes rather than failing."""
    try:
        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"), size)
    except OSError:
        pass
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # Pillow built without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _shown(name: str, limit: int = _MAX_SHOWN_NAME) -> str:
    """Control and surrogate characters would break the layout or FreeType; missing glyphs only draw boxes."""
    text = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in str(name)).strip() or "?"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _line_height(size: int) -> int:
    return int(round(size * 1.3))


def _wrap(text: str, font, width: int) -> list[str]:
    """Greedy word wrap; a word wider than the line keeps a line of its own (and is clipped)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(lines[-1] + " " + word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


def _text_strip(lines: list[str], width: int, size: int, bg, fg, center: bool = False) -> np.ndarray:
    font, line_h, pad = _font(size), _line_height(size), max(2, size // 3)
    strip = Image.new("RGB", (max(width, 1), len(lines) * line_h + 2 * pad), bg)
    draw = ImageDraw.Draw(strip)
    for k, line in enumerate(lines):
        x = max(pad, (width - font.getlength(line)) / 2) if center else pad
        draw.text((x, pad + k * line_h), line, fill=fg, font=font)
    return np.asarray(strip)[:, :width]


# ----------------------------------------------------------------------------------------------- overlay


def legend_entries(label_map: np.ndarray, class_names: list[str]) -> list[tuple[int, str, float]]:
    """(index, name, % of all pixels) for the classes present, largest first: the legend, and a table."""
    label_map = check_labels(label_map, len(class_names))
    counts = np.bincount(label_map[label_map >= 0].ravel(), minlength=len(class_names))
    present = np.flatnonzero(counts)
    order = present[np.lexsort((present, -counts[present]))]
    total = max(label_map.size, 1)
    return [(int(i), class_names[i], float(100.0 * counts[i] / total)) for i in order]


def _legend(entries: list[tuple[int, str, float]], colors: np.ndarray, width: int) -> np.ndarray:
    size = font_size(width)
    font, line_h, pad = _font(size), _line_height(size), max(2, size // 2)
    items = [(colors[i], f"{_shown(name)} {share:.1f}%" if share >= 0.05 else f"{_shown(name)} <0.1%")
             for i, name, share in entries]
    if not items:
        return _text_strip(["no labels"], width, size, (255, 255, 255), (90, 90, 90))
    swatch, x, y, placed = size, pad, pad, []
    for color, text in items:  # lay out first, so the strip is created at its final height
        w = swatch + pad // 2 + int(np.ceil(font.getlength(text)))
        if x > pad and x + w > width - pad:
            x, y = pad, y + line_h
        placed.append((x, y, color, text))
        x += w + 2 * pad
    canvas = Image.new("RGB", (max(width, 1), y + line_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.line([(0, 0), (width, 0)], fill=(200, 200, 200))
    for x, y, color, text in placed:
        top = y + (line_h - swatch) // 2
        draw.rectangle([x, top, x + swatch - 1, top + swatch - 1], fill=tuple(int(c) for c in color),
                       outline=(60, 60, 60))
        draw.text((x + swatch + pad // 2, y), text, fill=(20, 20, 20), font=font)
    return np.asarray(canvas)[:, :width]


def banner_strip(text: str, width: int) -> np.ndarray:
    """A red warning strip, wrapped to the width, so it cannot be cropped off or missed in a screenshot."""
    size = font_size(width)
    lines = _wrap(_shown(text, limit=500), _font(size), width - size)
    return _text_strip(lines, width, size, BANNER_COLOR, (255, 255, 255))


def overlay(image: np.ndarray, label_map: np.ndarray, class_names: list[str], alpha: float = 0.5,
            legend: bool = True, outline: bool = True, banner: str | None = None) -> np.ndarray:
    """Labelled pixels blended with their class colour, unlabelled pixels left exactly as they were (so
    "no label" reads as "the photo"), a legend below and an optional banner above; width is kept."""
    image = _as_rgb(image)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    label_map = check_labels(label_map, len(class_names), image.shape[:2])
    colors = palette(len(class_names))
    out = image.copy()
    labelled = label_map >= 0
    out[labelled] = _blend(image[labelled], colors[label_map[labelled]], alpha)
    if outline:
        out[_boundaries(label_map) & labelled] = OUTLINE_COLOR
    width = image.shape[1]
    parts = [banner_strip(banner, width)] if banner else []
    parts.append(out)
    if legend:
        parts.append(_legend(legend_entries(label_map, class_names), colors, width))
    return np.ascontiguousarray(np.concatenate(parts, axis=0))


# ---------------------------------------------------------------------------------- heatmaps, highlights


def heatmap(image: np.ndarray, scores: np.ndarray, alpha: float = 0.55, cmap: str = "turbo") -> np.ndarray:
    """Scores min-max normalised per map, since similarities have no fixed scale; a map of another size
    (the CLIP patch grid) is resized bilinearly. A constant map has nothing to show: it gets the colormap's
    low end. Non-finite scores count as the minimum."""
    image = _as_rgb(image)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.size == 0:
        raise ValueError(f"expected (H, W) scores, got shape {scores.shape}")
    finite = np.isfinite(scores)
    lo = scores[finite].min() if finite.any() else 0.0
    scores = np.where(finite, scores, lo)
    span = scores.max() - lo
    norm = (scores - lo) / span if span > 1e-12 else np.zeros_like(scores)
    h, w = image.shape[:2]
    if norm.shape != (h, w):
        norm = np.asarray(Image.fromarray(norm.astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR))
    colors = matplotlib.colormaps[cmap](np.clip(norm, 0.0, 1.0), bytes=True)[..., :3]
    return _blend(image, colors, alpha)


def highlight(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 255, 0),
              dim: float = 0.35) -> np.ndarray:
    """The clicked segment at full brightness with everything else dimmed, so it pops out whatever its
    colour; the outline thickens with the image so it stays visible after the browser scales it down."""
    image = _as_rgb(image)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match the image {image.shape[:2]}")
    out = np.round(image * dim).astype(np.uint8)
    out[mask] = image[mask]
    edge = _dilate(_boundaries(mask) & mask, max(0, round(max(mask.shape) / 400)))
    out[edge] = color
    return out


# ----------------------------------------------------------------------------------------------- layouts


def side_by_side(images: list[np.ndarray], titles: list[str], gap: int = 8) -> np.ndarray:
    """Panels of different heights padded with white at the bottom, a title strip above each and a white
    gap between them: for comparing methods in one downloadable picture."""
    if not images or len(images) != len(titles):
        raise ValueError(f"need one title per image, got {len(images)} images and {len(titles)} titles")
    images = [_as_rgb(im) for im in images]
    size = font_size(min(im.shape[1] for im in images))
    white, black = (255, 255, 255), (0, 0, 0)
    strips = [_text_strip(_wrap(_shown(t), _font(size), im.shape[1] - size), im.shape[1], size, white, black,
                          center=True) for im, t in zip(images, titles, strict=True)]
    title_h = max(s.shape[0] for s in strips)
    height = title_h + max(im.shape[0] for im in images)
    width = sum(im.shape[1] for im in images) + gap * (len(images) - 1)
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    x = 0
    for im, strip in zip(images, strips, strict=True):
        w = im.shape[1]
        out[: strip.shape[0], x: x + w] = strip
        out[title_h: title_h + im.shape[0], x: x + w] = im
        x += w + gap
    return out


def bar_chart_png(data: dict[str, dict[str, float]], title: str) -> np.ndarray:
    """Per-method stacked stage times as an RGB array. A "total" entry is not a stage: it sets the label,
    and any time it has beyond the stages shows as "other", so the bar length always equals the total."""
    methods = list(data)
    stages = list(dict.fromkeys(s for m in methods for s in data[m] if s != "total"))
    staged = {m: float(sum(v for s, v in data[m].items() if s != "total")) for m in methods}
    totals = {m: float(data[m].get("total", staged[m])) for m in methods}
    other = {m: totals[m] - staged[m] for m in methods}
    if any(v > 1e-3 * max(totals[m], 1e-9) for m, v in other.items()):
        stages.append("other")
    fig = Figure(figsize=(7.0, 1.6 + 0.55 * max(len(methods), 1)), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    y = np.arange(len(methods))
    left = np.zeros(len(methods))
    cmap = matplotlib.colormaps["tab10"]
    for k, stage in enumerate(stages):
        widths = np.array([max(other[m], 0.0) if stage == "other" else float(data[m].get(stage, 0.0))
                           for m in methods])
        ax.barh(y, widths, left=left, color=cmap(k % 10), label=stage.replace("_", " "))
        left += widths
    for yi, m in zip(y, methods, strict=True):
        ax.text(max(totals[m], left[yi]), yi, f" {totals[m]:.2f} s", va="center", fontsize=9)
    ax.set_yticks(y, methods)
    ax.invert_yaxis()
    ax.set_xlim(0, max([*totals.values(), *left, 1e-3]) * 1.18)
    ax.set_xlabel("seconds")
    if stages:
        fig.legend(loc="outside lower center", ncol=min(len(stages), 5), fontsize=8, frameon=False)
    if not methods:
        ax.text(0.5, 0.5, "no timings", transform=ax.transAxes, ha="center", va="center")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
