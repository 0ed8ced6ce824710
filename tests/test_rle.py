"""COCO RLE of segment masks: byte-equal to pycocotools, lossless, and tied to each segment in the JSON."""

from __future__ import annotations

import json

import numpy as np
import pycocotools.mask as coco
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from segment_anything.utils.amg import mask_to_rle_pytorch

from conftest import scene
from deop import rle

masks = st.tuples(st.integers(1, 40), st.integers(1, 40)).flatmap(
    lambda hw: arrays(np.bool_, hw, elements=st.booleans()))


@st.composite
def segment_maps(draw):
    """(map, n): ids -1..k, noisy (pixel by pixel) or blocky (a coarse grid stretched, as real segments are);
    n around k, so that some ids are absent and some map values are not segments at all."""
    h, w, k = draw(st.integers(1, 40)), draw(st.integers(1, 40)), draw(st.integers(0, 6))
    if draw(st.booleans()):
        m = draw(arrays(np.int32, (h, w), elements=st.integers(-1, k)))
    else:
        gh, gw = draw(st.integers(1, min(h, 6))), draw(st.integers(1, min(w, 6)))
        m = resized(draw(arrays(np.int32, (gh, gw), elements=st.integers(-1, k))), (h, w))
    return m, draw(st.integers(max(0, k - 1), k + 2))


@st.composite
def maps_and_sizes(draw):
    """(map, n, target size): each side any length, or the map's side times a ratio in 0.1..4 (mostly not an
    integer), so that targets are smaller and larger than the map, with 1-pixel sides among them."""
    m, n = draw(segment_maps())
    size = tuple(draw(st.one_of(st.integers(1, 97), st.floats(0.1, 4.0).map(lambda r, d=d: max(1, round(d * r)))))
                 for d in m.shape)
    return m, n, size


def resized(m, size):
    """The nearest-neighbour resize the app applies (deop.images.nearest_indices), written out."""
    rows = np.arange(size[0], dtype=np.int64) * m.shape[0] // size[0]
    cols = np.arange(size[1], dtype=np.int64) * m.shape[1] // size[1]
    return m[rows[:, None], cols[None, :]]


def old_counts_to_string(counts):
    """The scalar maskApi.c rleToString port that ``rle.counts_to_string`` replaced, kept as a reference."""
    values, out = [int(v) for v in counts], []
    for i, count in enumerate(values):
        x = count - values[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def old_encode_segments(segment_map, n):
    """The per-segment ``flat == i`` implementation that ``rle.encode_segments`` replaced: O(n * pixels)."""
    h, w = segment_map.shape
    flat = segment_map.ravel(order="F")
    return [{"size": [h, w], "counts": old_counts_to_string(rle._flat_run_lengths(flat == i))} for i in range(n)]


def coco_counts(mask):
    return coco.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode("ascii")


@settings(max_examples=200, deadline=None)
@given(masks)
def test_encoding_is_byte_equal_to_pycocotools_and_lossless(mask):
    ours = rle.encode(mask)
    ref = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert ours == {"size": [int(v) for v in ref["size"]], "counts": ref["counts"].decode("ascii")}
    assert np.array_equal(rle.decode(ours), mask)
    assert np.array_equal(coco.decode({**ours, "counts": ours["counts"].encode()}).astype(bool), mask)
    assert rle.area(ours) == int(mask.sum()) == int(coco.area(ref))


def test_large_counts_and_sam_uncompressed_rle_decode():
    # Runs longer than 2**15 exercise the multi-group varint and negative differences.
    mask = np.zeros((700, 900), dtype=bool)
    mask[:, 3:500] = True
    mask[650:, 880:] = True
    ours = rle.encode(mask)
    assert ours["counts"] == coco.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
    assert np.array_equal(rle.decode(ours), mask)
    sam_rle = mask_to_rle_pytorch(torch.from_numpy(mask)[None])[0]  # SAM's "uncompressed_rle" output mode
    assert np.array_equal(rle.decode(sam_rle), mask)


def test_encode_segments_matches_one_mask_at_a_time():
    segment_map = np.random.default_rng(0).integers(-1, 5, size=(31, 17)).astype(np.int32)
    assert rle.encode_segments(segment_map, 6) == [rle.encode(segment_map == i) for i in range(6)]
    assert rle.area(rle.encode_segments(segment_map, 6)[5]) == 0  # an id with no pixels is an empty mask


@settings(max_examples=300, deadline=None)
@given(maps_and_sizes())
def test_resized_encoding_equals_encoding_the_resized_map_and_pycocotools(map_n_size):
    m, n, size = map_n_size
    full = resized(m, size)
    ours = rle.encode_segments_resized(m, n, size)
    assert ours == rle.encode_segments(full, n) == old_encode_segments(full, n)
    assert [r["counts"] for r in ours] == [coco_counts(full == i) for i in range(n)]
    assert all(r["size"] == list(size) for r in ours)
    areas = rle.area_resized(m, n, size)
    assert areas.dtype == np.int64 and areas.tolist() == [int((full == i).sum()) for i in range(n)]
    assert areas.tolist() == [rle.area(r) for r in ours]


@settings(max_examples=200, deadline=None)
@given(segment_maps())
def test_encode_segments_equals_the_per_segment_implementation(map_n):
    m, n = map_n
    assert rle.encode_segments(m, n) == old_encode_segments(m, n)
    assert rle.encode_segments_resized(m, n, m.shape) == old_encode_segments(m, n)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**40), max_size=30))
def test_vectorised_counts_to_string_equals_the_scalar_port(counts):
    assert rle.counts_to_string(np.asarray(counts, dtype=np.int64)) == old_counts_to_string(counts)
    assert rle.string_to_counts(rle.counts_to_string(np.asarray(counts, dtype=np.int64))).tolist() == counts


def test_large_resize_of_a_voronoi_map_matches_the_materialised_map():
    # Long runs (multi-group varints, negative differences) and runs spanning many output columns.
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:48, :64]
    seeds = rng.uniform((0, 0), (48, 64), size=(12, 2))
    m = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, axis=-1).astype(np.int32)
    m[20:26] = -1
    m[:, 30:33] = 12  # a full-height stripe: one run across ~94 output columns, merged at each boundary
    size = (1517, 2003)
    full = resized(m, size)
    ours = rle.encode_segments_resized(m, 13, size)
    assert ours == rle.encode_segments(full, 13)
    assert [r["counts"] for r in ours[::4]] == [coco_counts(full == i) for i in range(0, 13, 4)]
    assert rle.area_resized(m, 13, size).tolist() == [int((full == i).sum()) for i in range(13)]


def test_empty_sizes():
    m = np.zeros((3, 4), dtype=np.int32)
    assert rle.encode_segments_resized(m, 2, (0, 5)) == rle.encode_segments(np.zeros((0, 5), np.int32), 2)
    assert rle.encode_segments_resized(m, 2, (0, 5))[0] == {"size": [0, 5], "counts": ""}
    assert rle.area_resized(m, 2, (5, 0)).tolist() == [0, 0]
    with pytest.raises(ValueError, match="empty"):
        rle.encode_segments_resized(np.zeros((0, 4), np.int32), 2, (5, 5))
    with pytest.raises(ValueError, match="empty"):
        rle.area_resized(np.zeros((0, 4), np.int32), 2, (5, 5))


def test_corrupt_rle_is_a_clear_error():
    good = rle.encode(np.eye(4, dtype=bool))
    with pytest.raises(ValueError, match="truncated"):
        rle.decode({**good, "counts": good["counts"][:-1] + "P"})  # continuation bit on the last char
    with pytest.raises(ValueError, match="not a COCO RLE string"):
        rle.decode({**good, "counts": good["counts"] + " "})
    with pytest.raises(ValueError, match="not 5x4"):
        rle.decode({"size": [5, 4], "counts": good["counts"]})


def test_result_json_holds_every_segment_mask(segmenter):
    result = segmenter.segment(scene(seed=5), "sky, grass, ball", method="both")
    data = json.loads(json.dumps(result.to_dict()))
    masks = data["segment_masks"]
    n = len(result.methods["one-pass"].segments)
    assert n > 0 and [m["id"] for m in masks] == list(range(n))
    for name in ("one-pass", "crop"):
        label_map = result.methods[name].label_map
        for seg in data["methods"][name]["segments"]:
            mask = rle.decode(masks[seg["id"]])
            assert np.array_equal(mask, result.mask(seg["id"]))
            assert mask.sum() == seg["area"] > 0
            assert (label_map[mask] == seg["label_index"]).all()


def test_dense_result_has_no_segment_masks(segmenter):
    assert "segment_masks" not in segmenter.segment(scene(seed=5), "sky, grass", method="dense").to_dict()
