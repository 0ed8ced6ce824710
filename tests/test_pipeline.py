"""The Segmenter end to end on random weights: shapes, stages, caching, options."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import deop.pipeline as pipeline_module
from conftest import scene
from deop.errors import OptionError, UnknownOptionError
from deop.models import RANDOM_WEIGHTS_WARNING
from deop.proposers import Proposer
from deop.result import STAGES


@pytest.fixture(scope="module")
def both(segmenter):
    return segmenter.segment(scene(seed=5), "sky, grass, ball, box", method="both")


def test_both_methods_share_proposals_and_report_every_stage(both):
    assert set(both.methods) == {"one-pass", "crop"}
    one, crop = both.methods["one-pass"], both.methods["crop"]
    for m in (one, crop):
        assert m.label_map.shape == (120, 160) and m.label_map.dtype == np.int32
        assert set(STAGES) <= set(m.timings)
        assert m.timings["total"] == pytest.approx(sum(m.timings[s] for s in STAGES[:-1]))
        assert all(v >= 0 for v in m.timings.values())
    assert len(one.segments) == len(crop.segments) > 0
    assert [s.box for s in one.segments] == [s.box for s in crop.segments]
    assert both.agreement is not None and 0.0 <= both.agreement["segments"] <= 1.0
    assert both.speedup("clip") > 0


def test_segments_carry_labels_scores_and_top5(both):
    names = both.classes
    for seg in both.methods["one-pass"].segments:
        assert seg.label in range(len(names))
        assert [n for n, _ in seg.top5][0] == names[seg.label]
        probs = [p for _, p in seg.top5]
        assert probs == sorted(probs, reverse=True) and probs[0] == pytest.approx(seg.score)
        assert len(seg.top5) == min(5, len(names))
        assert seg.area == int(both.mask(seg.id).sum())


def test_label_maps_follow_the_segment_labels(both):
    one = both.methods["one-pass"]
    for seg in one.segments:
        assert (one.label_map[both.mask(seg.id)] == seg.label).all()
    crop = both.methods["crop"]
    assert (crop.label_map[both.segment_map < 0] == -1).all()  # the baseline leaves uncovered pixels empty


def test_fill_uncovered_pixels_from_dense_map(segmenter):
    image = scene(seed=5)
    filled = segmenter.segment(image, "sky, grass", method="one-pass")
    empty = segmenter.segment(image, "sky, grass", method="one-pass", fill_uncovered=False)
    uncovered = filled.segment_map < 0
    assert (filled.methods["one-pass"].label_map >= 0).all()
    assert (empty.methods["one-pass"].label_map[uncovered] == -1).all()


def test_none_threshold_leaves_segments_unlabelled(segmenter):
    result = segmenter.segment(scene(seed=5), "sky, grass, ball", method="one-pass", none_threshold=1.0,
                               fill_uncovered=False)
    one = result.methods["one-pass"]
    assert all(s.label == -1 for s in one.segments)
    assert (one.label_map == -1).all()


def test_second_vocabulary_reuses_proposals_and_features(segmenter, monkeypatch):
    calls = {"sam": 0, "dense": 0, "crops": 0}
    for owner, name, key in ((Proposer, "propose", "sam"), (pipeline_module, "dense_features", "dense"),
                             (pipeline_module, "encode_crops", "crops")):
        original = getattr(owner, name)

        def counted(*a, _orig=original, _key=key, **k):
            calls[_key] += 1
            return _orig(*a, **k)

        monkeypatch.setattr(owner, name, counted)
    image = scene(seed=11)
    first = segmenter.segment(image, "sky, grass", method="both")
    encoded = segmenter.text_cache.names_encoded
    second = segmenter.segment(image, "sky, grass, a new thing", method="both", none_threshold=0.1)
    assert calls == {"sam": 1, "dense": 1, "crops": 1}
    assert segmenter.text_cache.names_encoded == encoded + 1  # only the new name was encoded
    one = second.methods["one-pass"]
    assert set(one.cached) == {"proposals", "image_encoding"}
    assert one.timings["proposals"] == 0 and one.timings["image_encoding"] == 0
    assert one.first_run_timings["image_encoding"] == first.methods["one-pass"].timings["image_encoding"]


def test_a_stream_sends_a_frame_only_before_work_that_costs(segmenter):
    """The one-pass answer comes before the crops are encoded; once they are cached (a new vocabulary on
    the same image), the complete answer comes alone: an intermediate frame would cost a render and a
    round trip for nothing."""
    image = scene(seed=12)
    first = list(segmenter.stream(image, "sky, grass", "both"))
    assert [r.pending for r in first] == [["crop"], []]
    again = list(segmenter.stream(image, "sky, ball", "both"))
    assert [r.pending for r in again] == [[]] and set(again[0].methods) == {"one-pass", "crop"}
    assert again[0].methods["crop"].cached == ["proposals", "image_encoding"]
    segmenter.stages["crops"].clear()  # the dense map cached, the crops not: the frame before them again
    assert [r.pending for r in segmenter.stream(image, "sky, tree", "both")] == [["crop"], []]


def test_dense_method_runs_without_sam(segmenter, monkeypatch):
    def fail(*a, **k):
        raise AssertionError("SAM must not run for the dense method")

    monkeypatch.setattr(Proposer, "propose", fail)
    result = segmenter.segment(scene(seed=3), "sky, grass", method="dense")
    dense = result.methods["dense"]
    assert dense.segments == [] and result.segment_map is None
    assert dense.label_map.shape == (120, 160) and (dense.label_map >= 0).all()
    assert result.similarity.shape[0] == 2


def test_large_images_are_processed_small_and_mapped_back(segmenter):
    image = np.repeat(np.repeat(scene(seed=2), 4, axis=0), 4, axis=1)  # 480 x 640
    result = segmenter.segment(image, "sky, grass", method="one-pass", max_side=160)
    assert result.methods["one-pass"].label_map.shape == (480, 640)
    assert result.settings["working_size"] == {"height": 120, "width": 160}
    for seg in result.methods["one-pass"].segments:
        x0, y0, x1, y1 = seg.box
        assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480


def test_random_weights_are_announced_and_json_serialises(both):
    assert both.random_weights and both.warnings[0] == RANDOM_WEIGHTS_WARNING
    data = json.loads(json.dumps(both.to_dict()))
    assert data["random_weights"] is True
    assert set(data["methods"]) == {"one-pass", "crop"}
    assert data["methods"]["crop"]["segments"][0].keys() >= {"label", "score", "area", "box", "top5"}
    assert "agreement" in data and data["speedup"]["clip"] > 0


def test_bad_requests_are_clear_errors(segmenter):
    with pytest.raises(OptionError, match="unknown method"):
        segmenter.segment(scene(), "cat", method="fast")
    with pytest.raises(ValueError, match="at least one class"):
        segmenter.segment(scene(), "  ,  ")
    with pytest.raises(UnknownOptionError, match="unknown option"):
        segmenter.segment(scene(), "cat", colour="red")
    with pytest.raises(OptionError, match="severance must be one of deop, maskclip"):
        segmenter.segment(scene(), "cat", severance="nope")
    with pytest.raises(OptionError, match="n_severed must be between 1 and 12, got 13"):
        segmenter.segment(scene(), "cat", n_severed=13)


def test_time_limit_stops_the_request_and_the_next_one_runs(segmenter):
    from deop.timing import SegmentTimeout

    image = scene(seed=21)
    with pytest.raises(SegmentTimeout, match="time limit"):
        segmenter.segment(image, "sky", method="both", timeout=0.0)
    result = segmenter.segment(image, "sky", method="both")
    assert "proposals" not in result.methods["crop"].cached  # the stopped request cached nothing
    assert result.methods["crop"].segments


@pytest.mark.parametrize("error,seed", [  # a new image each: the retry caches its features
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), 22),
    (RuntimeError("MPS backend out of memory (MPS allocated: 8.9 GB, other allocations: 1.2 GB)"), 24),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried "
                  "to allocate 4294967296 bytes"), 25),
], ids=["cuda", "mps", "cpu"])
def test_out_of_memory_becomes_a_clear_error_and_the_next_request_runs(segmenter, monkeypatch, error, seed):
    from deop.errors import DeviceOutOfMemory

    original = pipeline_module.dense_features

    def oom(*a, **k):
        raise error

    monkeypatch.setattr(pipeline_module, "dense_features", oom)
    with pytest.raises(DeviceOutOfMemory, match="ran out of memory on this image") as info:
        segmenter.segment(scene(seed=seed), "sky", method="one-pass")
    on_cpu = segmenter.device.type == "cpu"
    assert str(info.value).startswith("this machine" if on_cpu else "the GPU")
    assert ("--device cpu" in str(info.value)) is not on_cpu  # no advice to move to where it already is
    monkeypatch.setattr(pipeline_module, "dense_features", original)
    assert segmenter.segment(scene(seed=seed), "sky", method="one-pass").methods["one-pass"].label_map.size


def test_other_runtime_errors_are_not_taken_for_out_of_memory(segmenter, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(pipeline_module, "dense_features", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        segmenter.segment(scene(seed=23), "sky", method="one-pass")


def test_names_longer_than_clips_context_are_truncated_with_a_warning(segmenter):
    long_name = " ".join(["a"] * 95)  # 95 tokens in 189 characters: under the parser's cap, past CLIP's 77
    result = segmenter.segment(scene(seed=4), f"sky, {long_name}", method="dense")
    assert any("too long for CLIP" in w for w in result.warnings)
    assert len(result.classes) == 2


def test_concurrent_requests_get_exactly_their_own_results(segmenter):
    """Threads sharing one Segmenter (as the app's workers do) get what each call gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(scene(seed=30 + i), voc) for i, voc in enumerate(["sky, grass", "ball, box, sky", "grass", "box, ball"])]
    alone = [segmenter.segment(img, voc, method="both") for img, voc in jobs]
    segmenter.clear_cache()
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda job: segmenter.segment(job[0], job[1], method="both"), jobs))
    for a, b in zip(alone, together):
        assert a.classes == b.classes
        for name in ("one-pass", "crop"):
            np.testing.assert_array_equal(a.methods[name].label_map, b.methods[name].label_map)


def test_a_sibling_for_another_proposal_model_shares_models_and_text_only(segmenter):
    other = segmenter.with_proposal_model("vit_b")
    assert other.config.sam_kind == "vit_b" and segmenter.config.sam_kind == "tiny"
    assert other.config.options == segmenter.config.options and other.device == segmenter.device
    assert other.models is segmenter.models and other.text_cache is segmenter.text_cache
    assert all(other.stages[s] is not segmenter.stages[s] for s in segmenter.stages)
