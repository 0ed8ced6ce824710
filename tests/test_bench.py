"""The bench's measurements on tiny settings (schema, files written) and its target logic. No timing asserts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deop.bench.measure import Bench, forced_options, synthetic_image, synthetic_proposals
from deop.bench.report import evaluate_targets, format_table, targets_record, write_json, write_plot
from deop.presets import PRESETS
from deop.vocabulary import Vocabulary

REQUIRED = {"kind", "method", "n_masks", "image_size", "seconds_median", "seconds_min", "seconds_max", "device",
            "torch_threads", "clip_model", "sam_model", "peak_rss_mb"}


def test_synthetic_proposals_are_exactly_n_disjoint_segments():
    props = synthetic_proposals((120, 160), 25, seed=3)
    assert len(props) == 25
    assert set(np.unique(props.segment_map)) == set(range(25))
    assert props.areas.sum() == 120 * 160 and (props.areas > 0).all()
    assert props.areas.max() > 4 * props.areas.min()  # varied sizes


@pytest.fixture(scope="module")
def records(segmenter):
    steps = []
    bench = Bench(segmenter, repeats=1, warmup=0, advance=steps.append)
    out = bench.classification([224], [2, 5], n_classes=3)
    out += bench.end_to_end([("fast", 2)], methods=("one-pass",))
    out += bench.requery(class_counts=(3,), templates="single")
    out.append(bench.memory(out))
    out += bench.proposals_at_counts(presets=("fast",), targets=(1, 3, 100), points_per_side=2,
                                     image=synthetic_image(256))
    assert len(steps) == len(out) - 1 - 3  # one step per proposal pair
    flat = [r.to_dict() for r in out]
    return flat + [targets_record(evaluate_targets(flat), flat[0])]


def test_records_have_the_schema(records):
    kinds = [r["kind"] for r in records]
    assert kinds.count("classify") == 4 and kinds.count("requery") == 2
    assert kinds.count("e2e") == 1 and kinds[-8:] == ["memory", *["proposals"] * 6, "targets"]
    pairs = [r for r in records if r["kind"] == "proposals"]
    assert [r["method"] for r in pairs] == ["stock", "deop"] * 3
    assert [r["n_masks"] for r in pairs] == [1, 1, 3, 3, 12, 12]  # 2 x 2 points, 3 masks each: 12 at most
    assert all(r["identical"] and r["network_seconds"] > 0 and r["image"] == "given" for r in pairs)
    for r in records:
        assert REQUIRED - {"seconds_min", "seconds_max", "peak_rss_mb"} <= set(r)
        if r["kind"] in ("classify", "requery", "e2e", "proposals"):
            assert REQUIRED <= set(r) and r["seconds_median"] > 0 and r["seconds_min"] <= r["seconds_max"]
    assert {(r["method"], r["n_masks"]) for r in records if r["kind"] == "classify"} == {
        ("one-pass", 2), ("one-pass", 5), ("crop", 2), ("crop", 5)}
    assert {t["status"] for t in records[-1]["targets"]} <= {"PASS", "FAIL", "SKIP"}
    assert "one-pass" in format_table(records)


def test_json_and_plot_are_written(records, tmp_path):
    write_json(records, tmp_path / "b.json")
    write_plot(records, tmp_path / "b.png")
    assert json.loads((tmp_path / "b.json").read_text()) == records
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def fake(kind, method, size, n, seconds, **extra):
    return {"kind": kind, "method": method, "image_size": size, "n_masks": n, "seconds_median": seconds, **extra}


def synthetic(one_448=1.0, crop_448=20.0, one_200=1.2, requery=0.05, rss=3000.0, demo=90.0, fast=25.0,
              ours=3.0, stock=10.0, network=2.5, ours1=2.0, stock1=2.0):
    return [
        fake("classify", "one-pass", 448, 10, 1.0), fake("classify", "one-pass", 448, 100, one_448),
        fake("classify", "one-pass", 448, 200, one_200), fake("classify", "crop", 448, 100, crop_448),
        fake("classify", "one-pass", 672, 100, 2.0), fake("classify", "crop", 672, 100, 14.0),
        fake("requery", "one-pass", 1024, 100, requery, n_classes=20, text="cached"),
        fake("memory", "all", 1024, None, None, max_image_size=1024, sam_ran=True, peak_rss_mb=rss),
        fake("e2e", "one-pass", 1024, 0, demo, preset="demo", preset_default=True),
        fake("e2e", "one-pass", 1024, 0, fast, preset="fast", preset_default=True),
        *(fake("proposals", method, 640, n, seconds, preset="fast", target_masks=target, network_seconds=network)
          for method, n, target, seconds in (("stock", 300, 300, stock), ("deop", 300, 300, ours),
                                             ("stock", 1, 1, stock1), ("deop", 1, 1, ours1))),
    ]


def test_targets_pass():
    status = [t.status for t in evaluate_targets(synthetic())]
    assert status == ["PASS"] * 9


def test_targets_fail():
    results = evaluate_targets(synthetic(crop_448=10.0, one_200=1.5, requery=0.2, rss=5000.0, fast=40.0, ours=4.0,
                                         ours1=2.2))
    assert [t.status for t in results] == ["FAIL", "PASS", "FAIL", "FAIL", "FAIL", "FAIL", "FAIL", "FAIL", "FAIL"]
    assert results[0].value == pytest.approx(10.0)


def test_targets_skip_what_was_not_measured():
    records = [r for r in synthetic() if r["kind"] not in ("e2e", "memory", "proposals")]
    assert [t.status for t in evaluate_targets(records)][-5:] == ["SKIP"] * 5


def test_other_backends_do_not_stand_in_for_the_main_model_in_targets():
    main = [{**r, "sam_model": "vit_b"} for r in synthetic(demo=90.0, fast=25.0)]
    other = fake("e2e", "one-pass", 1024, 0, 80.0, preset="fast", preset_default=True, sam_model="sam2.1_hiera_t")
    records = main[:8] + [other] + main[8:]
    fast_target = evaluate_targets(records)[-1]
    assert fast_target.status == "PASS" and fast_target.value == pytest.approx(90.0 / 25.0)


def test_backend_flag():
    from deop.commands.bench import _backends
    from deop.errors import OptionError
    from deop.proposers import PROPOSERS

    offered = tuple(n for n, s in PROPOSERS.items() if s.in_app and n != "vit_b" and s.available())
    assert _backends(None, quick=True, main="vit_b") == () and _backends("none", quick=False, main="vit_b") == ()
    assert _backends(None, quick=False, main="vit_b") == offered
    assert ("sam2.1_hiera_t" in offered) == PROPOSERS["sam2.1_hiera_t"].available()
    assert _backends("vit_b, tiny", quick=True, main="vit_b") == ("vit_b", "tiny")
    with pytest.raises(OptionError, match="unknown proposal model"):
        _backends("sam3", quick=False, main="vit_b")


def test_backend_records_carry_their_model(segmenter):
    from deop.proposers import PROPOSERS

    if not PROPOSERS["sam2.1_hiera_t"].available():
        pytest.skip("the optional sam2 package is not installed")
    bench = Bench(segmenter, repeats=1, warmup=0)
    records = [r.to_dict() for r in bench.backends(["sam2.1_hiera_t"], configs=[("fast", 2)])]
    assert [(r["kind"], r["method"], r["sam_model"], r["preset"]) for r in records] == [
        ("e2e", "one-pass", "sam2.1_hiera_t", "fast")]
    assert records[0]["seconds_median"] > 0 and segmenter.config.sam_kind == "tiny"
    assert "sam2.1_hiera_t fast pps=2" in format_table(records)


def test_plan_runs_other_backends_at_the_main_models_settings():
    import argparse

    from deop.commands.bench import add_parser, plan, steps

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    p = plan(parser.parse_args(["bench", "--backends", "vit_l"]))
    assert p["backends"] == ("vit_l",) and p["e2e"] == [("fast", None), ("fast", 12), ("fast", 16), ("demo", None)]
    assert steps(p) == steps({**p, "backends": ()}) + len(p["e2e"])
    assert plan(parser.parse_args(["bench", "--backends", "vit_l", "--skip-e2e"]))["backends"] == ()


def test_proposal_models_compared_end_to_end_at_a_forced_mask_count(segmenter):
    bench = Bench(segmenter, repeats=1, warmup=0)
    records = [r.to_dict() for r in bench.at_forced_masks([("tiny", 256), ("tiny", 1024)], masks=5,
                                                           methods=("one-pass", "both"), image=synthetic_image(160))]
    assert [(r["kind"], r["method"], r["sam_model"], r["sam_input_size"]) for r in records] == [
        ("e2e_masks", m, "tiny", size) for size in (256, 1024) for m in ("one-pass", "both")]
    assert all(0 < r["n_masks"] <= 5 and r["forced_masks"] == 5 and r["proposals_seconds"] > 0 for r in records)
    assert "tiny@256 fast, 5 masks asked" in format_table(records)


def test_plan_has_the_mask_count_records_and_the_cpu_candidates():
    import argparse

    from deop.commands.bench import CPU_CANDIDATES, MASK_COUNTS, add_parser, plan, steps

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    full = plan(parser.parse_args(["bench", "--backends", "none"]))
    assert full["proposal_counts"] == {"presets": ("fast", "demo"), "targets": MASK_COUNTS} == {
        "presets": ("fast", "demo"), "targets": (1, 30, 100, 300)}
    assert set(full["candidates"]) <= set(CPU_CANDIDATES) and ("vit_b", 448) in full["candidates"]
    quick = plan(parser.parse_args(["bench", "--quick"]))
    assert quick["proposal_counts"]["targets"] == (1, 300) and quick["candidates"] == ()
    assert steps(full) - steps({**full, "candidates": ()}) == 2 * len(full["candidates"])
    assert plan(parser.parse_args(["bench", "--skip-e2e"]))["proposal_counts"] is None


def test_click_and_variant_costs_are_measured(segmenter):
    bench = Bench(segmenter, repeats=1, warmup=0)
    clicks = [r.to_dict() for r in bench.clicks([("tiny", 256)], n=3, image=synthetic_image(160))]
    assert [(r["kind"], r["sam_model"], r["repeats"]) for r in clicks] == [("click", "tiny", 3)]
    assert 0 < clicks[0]["seconds_median"] < 30
    variants = [r.to_dict() for r in bench.variants(image=synthetic_image(160), masks=5)]
    assert [r["method"] for r in variants] == ["deop", "maskclip", "sclip", "clearclip", "naclip", "none",
                                               "all cached"]
    forced = segmenter.segment(synthetic_image(160), Vocabulary.from_names(PRESETS["ade20k"][:20]), "one-pass",
                               options=forced_options(segmenter, 5)).methods["one-pass"]
    assert all(r["forced_masks"] == 5 and r["n_masks"] == len(forced.segments) for r in variants[:-1])
    assert all(r["seconds_median"] > 0 for r in variants) and "dense pass reused" in format_table(variants)


def test_precisions_are_timed_in_turn(segmenter, monkeypatch):
    """Each round runs every precision's one pass and crops once, in the same order, after the warm-up
    round: their ratios are compared from calls side by side, never from two stretches of the run."""
    from deop.bench import measure

    seen = []

    def spy(stock, method):
        return lambda clip, *args: seen.append((clip.precision, method)) or stock(clip, *args)

    monkeypatch.setattr(measure, "dense_features", spy(measure.dense_features, "one"))
    monkeypatch.setattr(measure, "encode_crops", spy(measure.encode_crops, "crop"))
    steps = []
    records = Bench(segmenter, repeats=2, warmup=1, advance=steps.append).classification_in_turn(
        [64], [2], ("float32", "bfloat16"), n_classes=3)
    assert seen == [("float32", "one"), ("float32", "crop"), ("bfloat16", "one"), ("bfloat16", "crop")] * 3
    assert [(r.precision, r.method, r.n_masks, r.repeats) for r in records] == [
        ("float32", "one-pass", 2, 2), ("float32", "crop", 2, 2), ("bfloat16", "one-pass", 2, 2),
        ("bfloat16", "crop", 2, 2)]
    assert len(steps) == 1 and all(r.params["in_turn"] for r in records)
    table = format_table([r.to_dict() for r in records])
    for one, crop in (records[:2], records[2:]):
        assert f"{one.precision} 64px N=2: {crop.seconds_median / one.seconds_median:.1f}x" in table


def test_precisions_flag():
    import argparse

    from deop.commands.bench import add_parser, plan, steps

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    p = plan(parser.parse_args(["bench", "--precisions", "float32,bfloat16,float32", "--sizes", "448,672"]))
    assert p["precisions"] == ("float32", "bfloat16") and steps(p) == 2 * len(p["n_masks"])
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--precisions", "float32,bf16"])
