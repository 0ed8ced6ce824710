"""Questions answered from a segmented image's caches: a segment added by clicking (SAM's decoder on the
kept embedding, classified from the cached dense map) and the severance variants side by side."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deop.pipeline as pipeline_module
from conftest import scene
from deop import explore
from deop.classify import dense_features, pool_segments, probabilities
from deop.proposers import Proposer, resolve_overlaps

VOCAB = "sky, grass, red ball, brown box"


@pytest.fixture(scope="module")
def image():
    return scene(seed=80)


@pytest.fixture()
def segmented(segmenter, image):
    """The image segmented once (its proposals, embedding and dense map cached), then the calls counted."""
    segmenter.segment(image, VOCAB, "one-pass")
    return segmenter


@pytest.fixture()
def counted(monkeypatch):
    calls = {"sam": 0, "dense": 0}
    for owner, name, key in ((Proposer, "propose", "sam"), (pipeline_module, "dense_features", "dense")):
        original = getattr(owner, name)

        def count(*args, _original=original, _key=key, **kwargs):
            calls[_key] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, name, count)
    return calls


def _predictor(segmenter, image):
    from segment_anything import SamPredictor

    predictor = SamPredictor(segmenter.proposer_at(segmenter.config.options.proposals.sam_input_size).model)
    predictor.set_image(image)
    return predictor


def test_an_added_segment_is_sams_mask_for_the_point_on_the_same_embedding(segmented, image, counted):
    added = explore.add_segment(segmented, image, VOCAB, [(30, 20, True)])
    assert counted == {"sam": 0, "dense": 0}  # no new encoder pass, no new CLIP pass
    assert added.reused == ["proposals", "image_encoding"] and added.seconds > 0
    with torch.inference_mode():
        masks, scores, _ = _predictor(segmented, image).predict(np.array([[30, 20]]), np.array([1]),
                                                                 multimask_output=True)
    best = int(np.argmax(scores))
    np.testing.assert_array_equal(added.mask, masks[best])
    assert added.sam_score == pytest.approx(float(scores[best])) and added.mask.shape == image.shape[:2]


def test_an_added_segment_gets_the_one_pass_label_of_its_mask(segmented, image):
    added = explore.add_segment(segmented, image, VOCAB, [(120, 90, True)])
    opts = segmented.config.options
    feats = dense_features(segmented.clip, image, opts.clip_size, opts.severance, opts.n_severed)
    text = segmented.text_cache.vocabulary(segmented.clip, __import__("deop").parse_vocabulary(VOCAB), opts.templates)
    probs = probabilities(pool_segments(feats, resolve_overlaps([added.mask])), text, opts.logit_scale)[0]
    assert added.label == int(probs.argmax()) and added.score == pytest.approx(float(probs.max()), abs=1e-6)
    assert [p for _, p in added.top5] == pytest.approx(probs.sort(descending=True).values[:4].tolist(), abs=1e-6)


def test_a_negative_point_refines_the_last_added_mask_as_sam_does(segmented, image, counted):
    first = explore.add_segment(segmented, image, VOCAB, [(30, 20, True)])
    refined = explore.add_segment(segmented, image, VOCAB, [(30, 20, True), (40, 25, False)], previous=first)
    assert counted == {"sam": 0, "dense": 0}
    with torch.inference_mode():
        masks, _, _ = _predictor(segmented, image).predict(
            np.array([[30, 20], [40, 25]]), np.array([1, 0]), mask_input=first.logits, multimask_output=False)
    np.testing.assert_array_equal(refined.mask, masks[0])
    assert refined.points == [(30, 20, True), (40, 25, False)]


def test_each_variant_in_the_comparison_equals_a_run_with_that_severance(segmenter, image, counted):
    runs = list(explore.compare_variants(segmenter, image, VOCAB))
    assert [r.variant for r in runs] == ["deop", "maskclip", "sclip", "clearclip", "naclip", "none"]
    assert runs[0].agreement == {"segments": 1.0, "pixels": 1.0, "n_segments": len(runs[0].method.segments)}
    for run in runs:
        alone = segmenter.segment(image, VOCAB, "one-pass", severance=run.variant).methods["one-pass"]
        np.testing.assert_array_equal(run.method.label_map, alone.label_map)
        assert [s.label for s in run.method.segments] == [s.label for s in alone.segments]
        assert 0.0 <= run.agreement["segments"] <= 1.0 and run.clip_seconds > 0
    dense_runs = counted["dense"]
    again = list(explore.compare_variants(segmenter, image, VOCAB))
    assert all(r.reused for r in again) and counted["dense"] == dense_runs  # switching back costs no pass
    changes = explore.label_changes(runs, runs[0].method.segments and segmenter.segment(image, VOCAB).classes)
    for row in changes:
        assert len({row[r.variant] for r in runs}) > 1


def test_adding_works_for_every_proposal_family(segmenter, image):
    """SAM 2.1 and MobileSAM keep their predictors' embeddings the same way (their own predictors)."""
    from dataclasses import replace

    from deop.proposers import PROPOSERS

    for kind in ("mobile_sam", "sam2.1_hiera_t"):
        if not PROPOSERS[kind].available():
            continue
        other = segmenter.with_proposal_model(kind)
        opts = segmenter.config.options.with_overrides(sam_input_size=256 if kind != "mobile_sam" else 1024,
                                                       points_per_side=2)
        other.segment(image, "sky, grass", "one-pass", options=opts)
        added = explore.add_segment(other, image, "sky, grass", [(60, 40, True)], opts)
        predictor = other.proposals(image, opts)[0].value.prompter
        with torch.inference_mode():
            masks, scores, _ = predictor.predict(point_coords=np.array([[60.0, 40.0]], dtype=np.float32),
                                                 point_labels=np.array([1]), multimask_output=True)
        np.testing.assert_array_equal(added.mask, masks[int(np.argmax(scores))])
        assert replace(added, mask=None).label in (-1, 0, 1)


def test_an_added_segment_relabelled_for_a_new_vocabulary_is_that_vocabularys_label(segmented, image, counted):
    """A cached re-run keeps the segments a user added: the same mask, labelled for the new names from
    the cached dense map, as adding it under the new vocabulary would."""
    added = explore.add_segment(segmented, image, VOCAB, [(120, 90, True)])
    new_vocab = "tree, red ball, water"
    again = explore.relabel(segmented, image, new_vocab, added)
    fresh = explore.add_segment(segmented, image, new_vocab, [(120, 90, True)])
    assert counted == {"sam": 0, "dense": 0}
    assert again.mask is added.mask and again.points == added.points
    assert (again.label, again.top5) == (fresh.label, fresh.top5) and again.score == pytest.approx(fresh.score)
    assert {name for name, _ in again.top5} <= {"tree", "red ball", "water"}


def test_adding_a_segment_stops_when_its_client_went_away(segmenter, image):
    """With the cache emptied, adding computes the proposals first, and a client that left stops it."""
    from deop.errors import Cancelled

    segmenter.clear_cache()
    with pytest.raises(Cancelled):
        explore.add_segment(segmenter, image, VOCAB, [(30, 20, True)], cancelled=lambda: True)
    with pytest.raises(Cancelled):
        next(explore.compare_variants(segmenter, image, VOCAB, cancelled=lambda: True))


def test_without_added_segments_the_downloads_result_is_the_result_itself(segmenter, image):
    result = segmenter.segment(image, VOCAB, "one-pass")
    assert explore.with_added(result, []) is result and "added_segments" not in result.to_dict()


def test_added_segments_box_area_and_rle_at_the_input_size_without_the_full_mask():
    """with_added describes an added mask at the input size from the working mask: the same box, area and
    RLE as the mask resized by nearest_resize, upsized, downsized, odd shapes and empty masks included."""
    from deop import rle
    from deop.images import nearest_resize

    rng = np.random.default_rng(3)
    for _ in range(300):
        h, w = rng.integers(1, 30, 2)
        size = tuple(int(v) for v in rng.integers(1, 90, 2))
        mask = np.zeros((h, w), bool)
        if rng.random() < 0.9:
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            mask[y0:y0 + rng.integers(1, h + 1), x0:x0 + rng.integers(1, w + 1)] = True
            mask &= rng.random((h, w)) < rng.random()
        full = nearest_resize(mask, size)
        ys, xs = np.nonzero(full)
        box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else [0, 0, 0, 0]
        one = mask.astype(np.int32) - 1
        assert explore.resized_box(mask, size) == box
        assert int(rle.area_resized(one, 1, size)[0]) == int(full.sum())
        assert rle.encode_segments_resized(one, 1, size)[0] == rle.encode(full)
