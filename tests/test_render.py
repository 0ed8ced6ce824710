"""deop.render on small synthetic arrays: exact colours, layout sizes, file formats and hostile names."""

from __future__ import annotations

import io
import json
import re
import warnings
import zipfile

import numpy as np
import pytest
from PIL import Image

from deop.export import label_image, masks_zip, safe_name
from deop.render import (
    OUTLINE_COLOR,
    bar_chart_png,
    heatmap,
    highlight,
    legend_entries,
    overlay,
    palette,
    side_by_side,
)

NAMES = ["sky", "grass", "ball", "unused"]


def photo(h: int = 40, w: int = 60, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def labels(h: int = 40, w: int = 60) -> np.ndarray:
    """Sky on top, grass below, a ball in the grass, and an unlabelled strip on the right."""
    lm = np.zeros((h, w), dtype=np.int32)
    lm[h // 2:] = 1
    lm[h // 2 + 5: h // 2 + 15, 10:20] = 2
    lm[:, w - 10:] = -1
    return lm


def expected_blend(image: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    return np.round((1 - alpha) * image.astype(float) + alpha * color.astype(float)).astype(np.uint8)


def away_from_edges(lm: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood holds a single label, so no outline can touch them."""
    p = np.pad(lm, 1, mode="edge")
    h, w = lm.shape
    same = np.ones_like(lm, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            same &= p[dy: dy + h, dx: dx + w] == lm
    return same


# ----------------------------------------------------------------------------------------------- palette


def test_palette_is_deterministic_and_prefix_stable():
    p = palette(30)
    assert p.shape == (30, 3) and p.dtype == np.uint8
    np.testing.assert_array_equal(palette(30), p)
    np.testing.assert_array_equal(palette(5), p[:5])
    assert palette(0).shape == (0, 3)


def test_first_20_colours_are_distinct_and_show_on_photos():
    p = palette(20).astype(float)
    dist = np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1)) + np.eye(20) * 1e9
    assert dist.min() > 50
    assert (p.max(axis=1) >= 150).all(), "near-black colour"
    assert (p.min(axis=1) <= 150).all(), "near-white colour"


# ----------------------------------------------------------------------------------------------- overlay


@pytest.mark.parametrize("alpha", [0.5, 0.3, 1.0])
def test_overlay_blends_labelled_pixels_exactly_and_leaves_the_rest(alpha):
    img, lm = photo(), labels()
    out = overlay(img, lm, NAMES, alpha=alpha, legend=False, outline=False)
    assert out.shape == img.shape and out.dtype == np.uint8
    colors = palette(len(NAMES))
    on = lm >= 0
    np.testing.assert_array_equal(out[on], expected_blend(img[on], colors[lm[on]], alpha))
    np.testing.assert_array_equal(out[~on], img[~on])


def test_outline_marks_region_edges_only():
    img, lm = photo(), labels()
    out = overlay(img, lm, NAMES, alpha=0.4, legend=False, outline=True)
    inner = away_from_edges(lm) & (lm >= 0)
    np.testing.assert_array_equal(out[inner], expected_blend(img[inner], palette(4)[lm[inner]], 0.4))
    np.testing.assert_array_equal(out[lm < 0], img[lm < 0])  # even right next to a labelled region
    assert (out[19, 5] == OUTLINE_COLOR).all() and (out[20, 5] == OUTLINE_COLOR).all()  # sky | grass
    assert (out[25, 9] == OUTLINE_COLOR).all()  # grass next to the ball


def test_legend_lists_present_classes_by_area():
    lm = labels()
    entries = legend_entries(lm, NAMES)
    assert [(i, n) for i, n, _ in entries] == [(0, "sky"), (1, "grass"), (2, "ball")]
    counts = [(lm == i).sum() for i in range(3)]
    assert [s for *_, s in entries] == pytest.approx([100 * c / lm.size for c in counts])
    assert legend_entries(np.full((3, 3), -1), NAMES) == []


def test_legend_ties_break_by_index():
    lm = np.array([[1, 1, 0, 0, 2]])
    assert [i for i, *_ in legend_entries(lm, NAMES)] == [0, 1, 2]


def test_legend_and_banner_add_height_not_width():
    img, lm = photo(), labels()
    plain = overlay(img, lm, NAMES, legend=False)
    with_legend = overlay(img, lm, NAMES)
    with_banner = overlay(img, lm, NAMES, banner="RANDOM WEIGHTS: labels are meaningless")
    assert plain.shape == img.shape
    assert with_legend.shape[1] == with_banner.shape[1] == img.shape[1]
    assert img.shape[0] < with_legend.shape[0] < with_banner.shape[0]
    top = with_banner[0].astype(int)
    assert (top[:, 0] > 150).mean() > 0.5 and (top[:, 1] < 80).mean() > 0.5  # a red strip
    np.testing.assert_array_equal(with_banner[-with_legend.shape[0]:], with_legend)


@pytest.mark.parametrize("shape", [(1, 1), (1, 500), (500, 1), (3, 2)])
def test_overlay_degenerate_sizes(shape):
    for lm in (np.full(shape, -1), np.zeros(shape, dtype=int)):
        out = overlay(np.zeros((*shape, 3), np.uint8), lm, ["x"], banner="warning")
        assert out.shape[1] == shape[1] and out.shape[0] > shape[0] and out.dtype == np.uint8


def test_overlay_survives_hostile_names_and_many_classes():
    names = ["猫 cat 🐈", "émigré", "a\x00b\nc", "\ud800", "", "x" * 500] + [f"class {i}" for i in range(144)]
    lm = (np.arange(60 * 80).reshape(60, 80) // 32) % len(names)
    out = overlay(photo(60, 80), lm, names, banner="⚠ RANDOM WEIGHTS — labels are meaningless")
    assert out.shape[1] == 80 and len(legend_entries(lm, names)) == 150


def test_overlay_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        overlay(photo(10, 10), np.zeros((10, 11), int), NAMES)
    with pytest.raises(ValueError):
        overlay(photo(10, 10), np.full((10, 10), 4), NAMES)
    with pytest.raises(ValueError):
        overlay(photo(10, 10), np.zeros((10, 10), int), NAMES, alpha=1.5)


# ------------------------------------------------------------------------------------------ label files


def test_label_image_round_trip():
    lm = labels()
    img = label_image(lm, NAMES)
    assert img.mode == "P"
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    back = Image.open(io.BytesIO(buf.getvalue()))
    np.testing.assert_array_equal(np.array(back), np.where(lm < 0, 255, lm))
    pal = np.array(back.getpalette()).reshape(-1, 3)
    np.testing.assert_array_equal(pal[:4], palette(4))
    assert (pal[255] == 0).all()


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int16])  # results keep compact int16 maps
def test_label_image_beyond_255_classes_is_16_bit(dtype):
    names = [f"c{i}" for i in range(300)]
    lm = np.array([[-1, 0, 254], [255, 299, -1]], dtype=dtype)
    img = label_image(lm, names)
    assert img.mode == "I;16"
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    np.testing.assert_array_equal(np.array(Image.open(buf)), np.where(lm < 0, 65535, lm.astype(np.int64)))
    with zipfile.ZipFile(io.BytesIO(masks_zip(lm, names))) as zf:
        assert json.loads(zf.read("classes.json"))["classes"][299]["pixels"] == 1


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/b", "a\\b", "..", ".", "", "猫", "C:\\x", "y" * 200])
def test_safe_names_cannot_escape(name):
    safe = safe_name(name)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,60}", safe)


def test_masks_zip_contents():
    names = ["sky", "../../etc/passwd", "a/b", "unused"]
    lm = labels()
    with zipfile.ZipFile(io.BytesIO(masks_zip(lm, names))) as zf:
        files = set(zf.namelist())
        assert files == {"0_sky.png", "1_______etc_passwd.png", "2_a_b.png", "classes.json"}
        for f in files:
            assert "/" not in f and "\\" not in f and ".." not in f
        meta = json.loads(zf.read("classes.json"))
        for i in range(3):
            entry = meta["classes"][i]
            mask = np.array(Image.open(io.BytesIO(zf.read(entry["file"]))))
            assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
            np.testing.assert_array_equal(mask == 255, lm == i)
            assert entry["name"] == names[i] and entry["pixels"] == (lm == i).sum()
    assert meta["classes"][3] == {"index": 3, "name": "unused", "pixels": 0, "file": None}
    assert meta["unlabelled_pixels"] == (lm < 0).sum() and (meta["height"], meta["width"]) == lm.shape


# ---------------------------------------------------------------------------------- heatmaps, highlights


def test_heatmap_shapes_and_constant_input():
    img = np.full((20, 30, 3), 100, np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flat = heatmap(img, np.full((20, 30), 3.0))
    assert flat.shape == img.shape and flat.dtype == np.uint8
    assert (flat == flat[0, 0]).all()
    ramp = heatmap(img, np.tile(np.linspace(-5, 5, 30), (20, 1)))
    assert not (ramp[:, 0] == ramp[:, -1]).all()
    np.testing.assert_array_equal(heatmap(img, np.random.rand(20, 30), alpha=0.0), img)


def test_heatmap_resizes_patch_grids_and_ignores_nan():
    scores = np.random.default_rng(1).random((7, 7))
    scores[0, 0] = np.nan
    out = heatmap(photo(), scores)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8


def test_highlight_dims_outside_and_outlines():
    img = photo()
    mask = np.zeros(img.shape[:2], bool)
    mask[10:30, 10:40] = True
    out = highlight(img, mask, color=(255, 255, 0))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (out[~mask].astype(int) <= img[~mask]).all() and out[~mask].mean() < img[~mask].mean() * 0.5
    np.testing.assert_array_equal(out[15:25, 15:35], img[15:25, 15:35])
    assert (out[10, 20] == (255, 255, 0)).all() and (out[20, 10] == (255, 255, 0)).all()
    with pytest.raises(ValueError):
        highlight(img, mask[:-1])


# ----------------------------------------------------------------------------------------------- layouts


def test_side_by_side_pads_to_the_tallest():
    a, b = photo(10, 30), photo(25, 40)
    out = side_by_side([a, b], ["one-pass", "crop"], gap=5)
    title_h = out.shape[0] - 25
    assert out.shape == (25 + title_h, 30 + 5 + 40, 3) and title_h > 0
    np.testing.assert_array_equal(out[title_h: title_h + 10, :30], a)
    np.testing.assert_array_equal(out[title_h:, 35:], b)
    assert (out[title_h + 10:, :30] == 255).all()
    with pytest.raises(ValueError):
        side_by_side([a], [])


def test_bar_chart_png_is_rgb():
    data = {"one-pass": {"proposals": 1.2, "image_encoding": 0.5, "classification": 0.1, "total": 1.9},
            "crop": {"proposals": 1.2, "image_encoding": 6.0, "classification": 0.4}}
    out = bar_chart_png(data, "seconds per stage")
    assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8 and out.shape[0] > 100
    assert len(np.unique(out.reshape(-1, 3), axis=0)) > 5
    assert bar_chart_png({}, "empty").shape[2] == 3
