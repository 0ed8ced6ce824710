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
