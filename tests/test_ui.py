"""What the app shows, computed from a real (random-weight) result."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import scene
from deop import ui


@pytest.fixture(scope="module")
def shown(segmenter):
    image = scene(seed=40)
    return image, segmenter.segment(image, "sky, grass, ball", method="both")


def test_annotations_match_the_label_map(shown):
    _, result = shown
    pairs = ui.annotations(result, "one-pass")
    label_map = result.methods["one-pass"].label_map
    assert {name for _, name in pairs} == {result.classes[i] for i in np.unique(label_map[label_map >= 0])}
    for mask, name in pairs:
        assert (label_map[mask] == result.classes.index(name)).all()


def test_latency_table_shows_every_stage_and_the_speedup(shown):
    _, result = shown
    text = ui.latency_markdown(result)
    for stage in ("proposals", "image encoding", "text encoding", "classification", "total"):
        assert f"| {stage} |" in text
    total = result.methods["crop"].first_run_timings["total"]
    assert f"{total:.3f} s" in text
    speedup = result.speedup("clip")
    assert (f"{speedup:.1f}x faster than one pass per crop" if speedup >= 1
            else f"crop baseline was {1 / speedup:.1f}x faster here") in text


@pytest.mark.parametrize("crop_seconds,phrase", [(50.0, "x faster than one pass per crop"),
                                                 (1e-4, "The crop baseline was")])
def test_speedup_sentence_reads_right_either_way(shown, crop_seconds, phrase):
    import copy

    result = copy.deepcopy(shown[1])
    crop = result.methods["crop"]
    for timings in (crop.timings, crop.first_run_timings):
        timings["image_encoding"], timings["classification"] = crop_seconds, 0.0
    text = ui.latency_markdown(result)
    assert phrase in text
    assert ("faster than one pass per crop" in text) == (crop_seconds > 1)  # never "0.3x faster"


def test_downloads_decode(shown, tmp_path):
    image, result = shown
    files = {Path(p).name: Path(p) for p in ui.downloads(image, result, tmp_path)}
    assert Path(files["segmentation.json"]).parent.parent == tmp_path
    assert json.loads(files["segmentation.json"].read_text())["classes"] == result.classes
    labels = np.array(Image.open(files["segmentation_labels.png"]))
    assert labels.shape == result.methods["one-pass"].label_map.shape
    with zipfile.ZipFile(files["segmentation_masks.zip"]) as z:
        assert "classes.json" in z.namelist()


def test_clicks_and_heatmaps(shown):
    image, result = shown
    seg = result.methods["one-pass"].segments[0]
    ys, xs = np.nonzero(result.mask(seg.id))
    text = ui.segment_at(result, int(xs[0]), int(ys[0]))
    assert f"Segment {seg.id}" in text and seg.top5[0][0] in text
    same = [s for s in result.methods["one-pass"].segments if s.label == seg.label]
    listing = ui.class_segments(result, result.classes[seg.label])
    assert f": {len(same)} segment" in listing and f"segment {seg.id} ({seg.area} px)" in listing
    heat = ui.heatmap_for(image, result, "grass")
    assert heat.shape[:2] == image.shape[:2]
    assert ui.heatmap_for(image, result, "not a class") is None


def test_status_line_explains_missing_weights(tmp_path):
    from deop import Segmenter, SegmenterConfig

    seg = Segmenter(SegmenterConfig(device="cpu", checkpoint_dir=str(tmp_path), download=False))
    loader = ui.ModelLoader(seg).start()
    assert loader.ready.wait(60)
    status = loader.status()
    assert status.startswith("**Models could not be loaded.**")
    assert str(tmp_path) in status and "--random-weights" in status


def test_inspect_view_highlights_the_clicked_segment(shown):
    image, result = shown
    plain = ui.inspect_view(image, result)
    assert plain.shape == image.shape  # pixel positions of a click are label-map positions
    seg = result.methods["one-pass"].segments[0]
    mask = result.mask(seg.id)
    ys, xs = np.nonzero(mask)
    picked = ui.highlight_at(plain, result, int(xs[0]), int(ys[0]))
    assert picked.shape == image.shape
    outside = ~mask & (plain.sum(axis=2) > 0)
    assert (picked[outside].astype(int).sum() < plain[outside].astype(int).sum())  # the rest is dimmed
    assert np.array_equal(ui.highlight_at(plain, result, -5, -5), plain)  # off the image: nothing picked


def test_app_offers_the_configured_proposal_model_and_the_other_families(segmenter):
    from dataclasses import replace

    from deop.pipeline import Segmenter
    from deop.proposers import PROPOSERS

    offered = ui.proposal_models(segmenter)
    small = [(s.title, n) for n, s in PROPOSERS.items() if s.in_app and s.available()]
    assert offered[0] == ("SAM tiny", "tiny") and offered[1:] == small
    assert ("SAM vit_b", "vit_b") in small
    assert (("SAM 2.1 hiera_t", "sam2.1_hiera_t") in small) == PROPOSERS["sam2.1_hiera_t"].available()
    first = small[-1][1]
    reordered = ui.proposal_models(Segmenter(replace(segmenter.config, sam_kind=first)))
    assert [kind for _, kind in reordered] == [first] + [n for _, n in small if n != first]


def test_segmenter_pool_shares_models_and_text_and_refuses_other_kinds(segmenter):
    import pytest

    pool = ui.SegmenterPool(segmenter, ["tiny", "vit_b"])
    assert pool.get(None) is segmenter and pool.get("tiny") is segmenter
    other = pool.get("vit_b")
    assert other is pool.get("vit_b") and other.config.sam_kind == "vit_b"
    assert other.models is segmenter.models and other.text_cache is segmenter.text_cache
    assert other.config.options == segmenter.config.options
    with pytest.raises(ValueError, match="unknown proposal model 'vit_h'"):
        pool.get("vit_h")


def test_a_bug_while_loading_is_an_internal_error_not_ready(segmenter, monkeypatch, caplog):
    """Only our own errors read as a plain message; anything else is logged with an id, and the status
    never says "Ready" over models that failed to load."""
    from deop import Segmenter

    seg = Segmenter(segmenter.config)
    monkeypatch.setattr(seg, "load", lambda: {}["no such key"])
    loader = ui.ModelLoader(seg).start()
    assert loader.ready.wait(30)
    assert loader.error.startswith("internal error (id ") and "Ready" not in loader.status()
    error_id = loader.error.split("(id ")[1].split(")")[0]
    assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records)
