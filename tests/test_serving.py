"""deop.serving without a server: bounded sessions, temp-file clean-up, strict inputs, cost estimates."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import scene
from deop import serving
from deop.errors import OptionError, TooExpensive


@pytest.fixture(scope="module")
def result(segmenter):
    return segmenter.segment(scene(seed=60), "sky, grass", method="both")


def view(result, side: int = 64) -> serving.SessionView:
    return serving.SessionView(np.zeros((side, side, 3), np.uint8), result)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_session_views_count_their_arrays(result):
    v = view(result, 100)
    expected = 100 * 100 * 3 + result.work_segment_map.nbytes + result.similarity.nbytes + sum(
        m.work_label_map.nbytes for m in result.methods.values())
    assert v.nbytes() == expected


def test_sessions_are_bounded_in_bytes_least_recently_used_first(result):
    one = view(result).nbytes()
    store = serving.SessionStore(max_bytes=3 * one)
    tokens = [store.put(view(result)) for _ in range(3)]
    assert len(store) == 3 and store.nbytes == 3 * one
    assert store.get(tokens[0]) is not None  # the oldest was used again: the second goes first
    fourth = store.put(view(result))
    assert store.get(tokens[1]) is None and store.get(tokens[0]) is not None and store.get(fourth) is not None
    assert store.nbytes <= 3 * one
    again = store.put(view(result), tokens[0])  # a session's new answer replaces its old one
    assert again == tokens[0] and len(store) == 3 and store.nbytes == 3 * one
    store.drop(tokens[0])
    assert store.get(tokens[0]) is None and store.nbytes == 2 * one


def test_sessions_expire(result):
    clock = Clock()
    store = serving.SessionStore(ttl_seconds=60, clock=clock)
    token = store.put(view(result))
    clock.now += 59
    assert store.get(token) is not None  # a look counts as use
    clock.now += 59
    assert store.get(token) is not None
    clock.now += 61
    assert store.get(token) is None and store.nbytes == 0
    assert store.get(None) is None and store.get(["not", "a", "token"]) is None


def _file(path, size: int, age: float, now: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (now - age, now - age))


def test_janitor_deletes_by_age_then_by_total_size_and_keeps_what_is_protected(tmp_path):
    clock = Clock()
    now = clock.now = 10_000.0
    a, b = tmp_path / "uploads", tmp_path / "results"
    _file(a / "h1" / "old.png", 100, 7200, now)
    _file(a / "h2" / "example.jpg", 100, 99_999, now)
    _file(b / "r1" / "mid.json", 300, 1000, now)
    _file(b / "r2" / "newer.json", 300, 500, now)
    _file(b / "r3" / "fresh.json", 300, 10, now)
    janitor = serving.Janitor([a, b], max_age=3600, max_bytes=700, min_age=60, clock=clock)
    janitor.protect([a / "h2" / "example.jpg"])
    out = janitor.sweep()
    assert not (a / "h1").exists()  # too old, and its emptied folder is gone too
    assert (a / "h2" / "example.jpg").exists()  # protected
    assert not (b / "r1" / "mid.json").exists()  # the oldest beyond the total
    assert (b / "r2" / "newer.json").exists() and (b / "r3" / "fresh.json").exists()
    assert out == {"removed": 2, "freed_bytes": 400, "left_bytes": 600}  # protected files are not counted
    _file(b / "r4" / "burst.json", 900, 5, now)  # over the total, but all young enough to be downloading
    janitor.sweep()
    assert (b / "r3" / "fresh.json").exists() and (b / "r4" / "burst.json").exists()
    assert not (b / "r2").exists()  # the one old enough went
    assert janitor.maybe_sweep() is None  # at most once per `every` seconds
    clock.now += 61
    assert janitor.maybe_sweep() is not None


def test_request_inputs_name_what_is_wrong():
    checks = {c.name: c for c in serving.request_inputs(
        {"points_per_side": 10, "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95, "max_side": 1024,
         "severance": "deop", "none_threshold": 0.0, "fill_uncovered": True, "templates": "segmentation",
         "clip_size": 448, "n_severed": 1, "max_masks": 100, "min_mask_region_area": 100, "box_nms_thresh": 0.7},
        ["vit_b", "mobile_sam"])}
    assert list(checks)[:3] == ["vocabulary", "method", "points_per_side"] and list(checks)[-1] == "proposal_model"
    bad = {"vocabulary": (None, "vocabulary must be a text"), "method": ("fast", "method must be one of one-pass"),
           "points_per_side": ("abc", "points_per_side must be a whole number, got 'abc'"),
           "max_masks": (10.7, "max_masks must be a whole number, got 10.7"),
           "max_side": (4096, "max_side must be between 128 and 2048, got 4096"),
           "fill_uncovered": ("no", "fill_uncovered must be true or false, got 'no'"),
           "severance": ([1], "severance must be a text"),
           "proposal_model": ("vit_h", "must be one of vit_b, mobile_sam"),
           # valid JSON to Python's parser, and past what a float can hold
           "pred_iou_thresh": (float("nan"), "pred_iou_thresh must be a number, got nan"),
           "none_threshold": (float("inf"), "none_threshold must be a number, got inf"),
           "clip_size": (10**400, "clip_size must be a whole number, got 1000")}
    for name, (value, message) in bad.items():
        with pytest.raises(OptionError, match=message.replace("(", r"\(").replace(")", r"\)")):
            checks[name].check(value)
    assert checks["points_per_side"].check(12.0) == 12 and checks["fill_uncovered"].check(False) is False
    with pytest.raises(OptionError, match="got \\['cat', 'dog'\\]"):
        checks["vocabulary"].check(["cat", "dog"])


COSTS = serving.UnitCosts(sam_input_size=512, sam_encoder=2.0, sam_batch=0.25, points_per_batch=16, clip_448=0.8,
                          crop_batch=9.0, crop_batch_size=32, text_name=0.1)
REQUEST = {"method": "both", "points_per_side": 10, "clip_size": 448, "max_masks": 100, "sam_input_size": 512,
           "crop_n_layers": 0}


def test_the_estimate_adds_what_a_request_runs():
    est = serving.estimate(COSTS, (768, 1024), REQUEST, new_names=4)
    assert est.parts == pytest.approx({"proposals": 2.0 + 7 * 0.25, "features": 0.8, "crops": 4 * 9.0, "text": 0.4})
    one_pass = serving.estimate(COSTS, (768, 1024), {**REQUEST, "method": "one-pass"}, 0)
    assert one_pass.parts["crops"] == 0 and one_pass.parts["proposals"] == est.parts["proposals"]
    dense = serving.estimate(COSTS, (768, 1024), {**REQUEST, "method": "dense"}, 0)
    assert dense.parts["proposals"] == 0 and dense.parts["features"] == 0.8
    worst = serving.estimate(COSTS, (1536, 2048), {**REQUEST, "points_per_side": 48, "clip_size": 1024}, 150)
    assert worst.seconds > 60 and worst.parts["proposals"] > 4 * est.parts["proposals"]


def test_a_request_past_the_limit_is_refused_naming_what_to_lower():
    assert serving.check_cost(COSTS, (768, 1024), REQUEST, 0, limit=300).seconds < 60
    assert serving.check_cost(None, (768, 1024), REQUEST, 0, limit=1) is None  # not calibrated: not judged
    with pytest.raises(TooExpensive, match=r"about 41 s here, over the 30 s limit.*lower Max masks \(or the one-pass"):
        serving.check_cost(COSTS, (768, 1024), REQUEST, 0, limit=30)
    with pytest.raises(TooExpensive, match="lower SAM points per side"):
        serving.check_cost(COSTS, (768, 1024), {**REQUEST, "points_per_side": 48, "method": "one-pass"}, 0, limit=30)


def test_calibration_measures_every_unit(segmenter):
    costs = serving.calibrate(segmenter, segmenter.config.options)
    for name in ("sam_encoder", "sam_batch", "clip_448", "crop_batch", "text_name"):
        assert getattr(costs, name) > 0, name
    assert costs.points_per_batch == segmenter.config.options.proposals.points_per_batch


def test_session_views_count_the_segments_added_by_clicks(result):
    from deop.explore import AddedSegment

    v = view(result, 100)
    plain = v.nbytes()
    added = [AddedSegment(np.zeros((100, 100), bool), [(1, 2, True)], np.zeros((1, 256, 256), np.float32), 0.5,
                          0, 0.9, [], 0.01, []) for _ in range(3)]
    v.extra["added"] = added
    assert v.nbytes() == plain + 3 * (100 * 100 + 256 * 256 * 4)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks here")
def test_janitor_never_follows_a_link_out_of_its_roots(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    victim = outside / "keep.txt"
    victim.write_text("not the app's")
    old = 1000.0
    os.utime(victim, (old, old))
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "old.txt").write_text("the app's")
    os.utime(root / "old.txt", (old, old))
    out = serving.Janitor([root], max_age=60, clock=lambda: 10_000.0).sweep()
    assert out["removed"] == 1 and victim.exists() and not (root / "old.txt").exists()
    assert (root / "link").is_symlink()


def test_memory_release_freezes_what_lives_after_the_first_request(monkeypatch):
    """The first release moves what is alive out of later collections' sight, once; each release collects."""
    import gc

    frozen, calls = [], []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(1))
    release = serving.MemoryRelease(lambda: calls.append(1))
    release()
    release()
    assert calls == [1, 1] and frozen == [1] and release.frozen
