"""``--half``: CLIP in float16, as on a GPU.

``build_clip`` only halves the model on a GPU (float16 is slow on a CPU) and no GPU is lent to this
project's tests, so the float16 path would otherwise never run before a user's GPU ran it. Here the same
float16 model runs on the CPU, where PyTorch has the kernels: every dtype conversion between the model and
the float32 rest of the pipeline (image, crops, text, pooling, scores, heatmaps) is exercised, and the
answers must match float32's to float16's precision.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import SMALL_CONFIG, scene
from deop import Segmenter
from deop.clip.model import build_clip
from deop.models import ModelCache

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results(segmenter):
    """(float32, float16) results of the same image, vocabulary, weights and proposals."""
    full = segmenter.clip
    half = replace(full, model=copy.deepcopy(full.model).half())  # what build_clip(half=True) makes on a GPU
    models = ModelCache()
    models.clip = lambda *args: half
    models.proposer = segmenter.models.proposer  # the session's SAM: same proposals
    half_segmenter = Segmenter(replace(SMALL_CONFIG, half=True), models=models)
    assert half_segmenter.clip.dtype == torch.float16
    # NMS off: a random SAM's masks overlap so much that NMS would leave one segment to compare;
    # 8 of them and one prompt template: float16 is slow on a CPU
    image, vocabulary = scene(seed=21), "sky, grass, red ball, brown box, tree"
    options = {"box_nms_thresh": 1.0, "max_masks": 8, "templates": "single"}
    return (segmenter.segment(image, vocabulary, method="both", **options),
            half_segmenter.segment(image, vocabulary, method="both", **options))


def test_float16_results_come_out_as_float32(results):
    _, half = results
    assert half.similarity.dtype == np.float32
    assert half.to_dict()["methods"]["crop"]["segments"]  # JSON-serialisable, segments present
    for method in half.methods.values():
        assert method.label_map.dtype == np.int32
        assert all(isinstance(s.score, float) for s in method.segments)


def test_float16_matches_float32_to_its_precision(results):
    full, half = results
    np.testing.assert_array_equal(half.segment_map, full.segment_map)
    assert half.similarity.shape == full.similarity.shape
    np.testing.assert_allclose(half.similarity, full.similarity, atol=5e-3)
    assert full.methods.keys() == half.methods.keys() == {"one-pass", "crop"}
    for name in full.methods:
        a, b = full.methods[name].segments, half.methods[name].segments
        assert [s.id for s in a] == [s.id for s in b] and len(a) > 1
        for sa, sb in zip(a, b):
            pa, pb = dict(sa.top5), dict(sb.top5)
            top1, top2 = sa.top5[0][1], sa.top5[1][1]
            if top1 - top2 > 0.02:  # a clear winner in float32 stays the winner in float16
                assert sb.label == sa.label
            for cls in pa.keys() & pb.keys():
                assert pb[cls] == pytest.approx(pa[cls], abs=1e-2)



def test_half_is_ignored_on_the_cpu():
    clip = build_clip("ViT-B-16-quickgelu", None, torch.device("cpu"), half=True)
    assert clip.dtype == torch.float32
