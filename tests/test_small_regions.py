"""The box-local small-region cleanup equals segment_anything's remove_small_regions on the full image."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from segment_anything.utils.amg import remove_small_regions

from deop.proposers.amg import remove_small_regions_cropped, tight_crop


@st.composite
def masks(draw) -> np.ndarray:
    """Small images whose masks touch borders, span rows or columns, are empty or full, have ties."""
    h = draw(st.integers(1, 20))
    w = draw(st.integers(1, 20))
    kind = draw(st.sampled_from(["noise", "sparse", "dense", "blocks"]))
    if kind == "blocks":
        mask = np.zeros((h, w), dtype=bool)
        for _ in range(draw(st.integers(0, 5))):
            y0, x0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
            y1, x1 = draw(st.integers(y0, h - 1)), draw(st.integers(x0, w - 1))
            mask[y0:y1 + 1, x0:x1 + 1] ^= True
        return mask
    density = {"noise": 0.5, "sparse": 0.15, "dense": 0.85}[kind]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mask = rng.random((h, w)) < density
    flips = draw(st.lists(st.tuples(st.integers(0, h - 1), st.integers(0, w - 1)), max_size=4))
    for y, x in flips:  # a few pixels hypothesis can shrink towards
        mask[y, x] ^= True
    return mask


def _full(crop: np.ndarray, box, shape) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    if crop.size:
        x0, y0, x1, y1 = box
        assert crop.shape == (y1 - y0 + 1, x1 - x0 + 1)
        out[y0:y1 + 1, x0:x1 + 1] = crop
    return out


def _check_tight(crop: np.ndarray, box) -> None:
    assert crop.dtype == bool
    if crop.size:
        assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()
    else:
        assert tuple(box) == (0, 0, 0, 0)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mask=masks(), area=st.integers(0, 40), mode=st.sampled_from(["holes", "islands"]))
def test_each_mode_equals_stock(mask, area, mode):
    expected, expected_changed = remove_small_regions(mask, area, mode)
    crop, box = tight_crop(mask)
    out, out_box, changed = remove_small_regions_cropped(crop, box, mask.shape, area, mode)
    _check_tight(out, out_box)
    assert changed == expected_changed
    assert np.array_equal(_full(out, out_box, mask.shape), expected)
    assert tuple(out_box) == tight_crop(expected)[1]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mask=masks(), area=st.integers(1, 60))
def test_holes_then_islands_equals_stock(mask, area):
    """The sequence postprocess_small_regions runs, with the changed flags it combines."""
    m1, c1 = remove_small_regions(mask, area, "holes")
    m2, c2 = remove_small_regions(m1, area, "islands")
    crop, box = tight_crop(mask)
    crop, box, d1 = remove_small_regions_cropped(crop, box, mask.shape, area, "holes")
    crop, box, d2 = remove_small_regions_cropped(crop, box, mask.shape, area, "islands")
    assert (d1, d2) == (c1, c2)
    assert np.array_equal(_full(crop, box, mask.shape), m2)


def _never(*_args):
    raise AssertionError("the full image was labelled")


@pytest.mark.parametrize("where", ["middle", "top-left corner", "left edge", "full height at the left"])
def test_window_decides_without_the_full_image(where):
    """The fallback is for the rare cases only: ordinary masks never label the whole image (the area exceeds
    the margin ring's, so the outside's size must be counted in full)."""
    mask = np.zeros((60, 80), dtype=bool)
    rows, cols = {"middle": (slice(20, 40), slice(30, 50)),
                  "top-left corner": (slice(0, 20), slice(0, 30)),
                  "left edge": (slice(10, 50), slice(0, 30)),
                  "full height at the left": (slice(0, 60), slice(0, 30))}[where]
    mask[rows, cols] = True
    mask[rows.start + 5, cols.start + 5] = False  # a one-pixel hole
    mask[rows.start + 2: rows.start + 4, cols.stop + 3] = True  # an island, which widens the box
    crop, box = tight_crop(mask)
    for mode in ("holes", "islands"):
        out, out_box, changed = remove_small_regions_cropped(crop, box, mask.shape, 400, mode, full_image=_never)
        expected, expected_changed = remove_small_regions(mask, 400, mode)
        assert changed and expected_changed
        assert np.array_equal(_full(out, out_box, mask.shape), expected)


@pytest.mark.parametrize("shape, rows, cols", [
    ((30, 20), slice(5, 25), slice(0, 20)),    # full width, background above and below
    ((20, 30), slice(0, 20), slice(5, 25)),    # full height, background left and right
])
def test_outside_cut_in_two(shape, rows, cols):
    """Two outside parts, joined through the box on the full image only: the holes they form must match."""
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    mask[rows.start + 3: rows.start + 6, cols.start + 4: cols.start + 7] = False  # a hole inside
    if shape[0] > shape[1]:
        mask[rows, 10] = False  # a channel joining the background above and below
    else:
        mask[10, cols] = False
    for area in (1, 10, 50, 500):
        for mode in ("holes", "islands"):
            expected, expected_changed = remove_small_regions(mask, area, mode)
            crop, box = tight_crop(mask)
            out, out_box, changed = remove_small_regions_cropped(crop, box, shape, area, mode)
            assert changed == expected_changed
            assert np.array_equal(_full(out, out_box, shape), expected)


def test_all_islands_small_keeps_the_one_stock_keeps():
    """Equal largest islands: stock keeps the first of cv2's labels, which the window alone cannot tell."""
    mask = np.zeros((40, 40), dtype=bool)
    mask[31:33, 2:4] = True   # 4 px, low and left
    mask[30:32, 30:32] = True  # 4 px, higher and right
    mask[5, 20] = True
    expected, _ = remove_small_regions(mask, 10, "islands")
    crop, box = tight_crop(mask)
    out, out_box, changed = remove_small_regions_cropped(crop, box, mask.shape, 10, "islands")
    assert changed and np.array_equal(_full(out, out_box, mask.shape), expected)


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.float32])
def test_a_crop_of_another_dtype_is_read_as_a_mask(dtype):
    """Not only bool crops: an int64 crop was once reinterpreted byte by byte (8 columns a pixel)."""
    mask = np.zeros((20, 24), dtype=bool)
    mask[4:12, 5:15] = True
    mask[7, 8] = False  # a hole
    mask[16, 20] = True  # an island
    crop, box = tight_crop(mask)
    for mode in ("holes", "islands"):
        expected, changed = remove_small_regions(mask, 5, mode)
        got, got_box, got_changed = remove_small_regions_cropped(crop.astype(dtype), box, mask.shape, 5, mode)
        assert np.array_equal(_full(got, got_box, mask.shape), expected) and got_changed == changed
