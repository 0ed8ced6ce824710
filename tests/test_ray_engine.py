"""The Ray engine (deop.engine) on one local Ray for the session (tests/ray_support.py): the same confusion
matrices as the local engine, a bad image reported by name from inside an actor, a resumed ``segment`` that
writes only what was missing; and Ray's absence or silence as clear messages."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark_support import make_benchmarks
from conftest import SMALL_CONFIG, scene
from deop.benchmarks import BENCHMARKS, manifest
from deop.commands import main
from deop.config import EngineConfig
from deop.engine import evaluate_local, evaluate_ray
from deop.evaluation import DatasetSpec, Plan, Scorer, plan_runs
from ray_support import ray_session  # noqa: F401

SMALL = ["--random-weights", "--device", "cpu", "--sam", "tiny", "--points-per-side", "4", "--pred-iou-thresh", "0",
         "--stability-score-thresh", "0", "--max-side", "128", "--clip-size", "224", "--templates", "single"]


def test_local_and_ray_engines_give_identical_confusion_matrices(ray_session, tmp_path, segmenter):  # noqa: F811
    root = make_benchmarks(tmp_path)
    broken = root / "VOCdevkit/VOC2012/JPEGImages/2008_000002.jpg"
    broken.write_bytes(broken.read_bytes()[:200])
    datasets, samples = {}, []
    for name in ("voc21", "ade20k"):
        layout, _, found = manifest(BENCHMARKS[name], root)
        datasets[name] = DatasetSpec.of(BENCHMARKS[name], layout)
        samples += found
    plan = Plan(plan_runs("dense", ["deop", "naclip"], "deop"), datasets)
    config = replace(SMALL_CONFIG, options=SMALL_CONFIG.options.with_overrides(templates="single"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray actor runs (one CPU each): the same arithmetic, bit for bit
    try:
        local = evaluate_local(Scorer(config, plan), samples, lambda part: None)
    finally:
        torch.set_num_threads(threads)
    seen = []
    remote = evaluate_ray(config, plan, samples, EngineConfig(engine="ray", workers=2, batch_size=2), seen.append)
    assert len(seen) >= 2  # one partial per batch, not one per image
    assert sorted(local.counts) == sorted(remote.counts) == [(b, r) for b in ("ade20k", "voc21")
                                                                 for r in ("dense/deop", "dense/naclip")]
    for key in local.counts:
        assert local.counts[key].sum() > 0
        np.testing.assert_array_equal(local.counts[key], remote.counts[key])
    assert local.images == remote.images == {"voc21": 1, "ade20k": 2}
    assert [f[:2] for f in remote.failed] == [("voc21", "2008_000002")] == [f[:2] for f in local.failed]
    assert str(broken) in remote.failed[0][2]


def test_resumed_segment_on_ray_writes_only_what_was_missing(ray_session, tmp_path, segmenter, capsys,  # noqa: F811
                                                             monkeypatch):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for i, stem in enumerate("abc"):
        Image.fromarray(scene(64, 80, seed=i)).save(folder / f"{stem}.png")
    args = ["segment", str(folder), "--classes", "sky, grass", "--method", "one-pass", "--out", str(out), *SMALL]
    assert main(args) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert len(before) == 3 * 3  # an overlay, a label map and the JSON per image
    (out / "b_labels.png").unlink()  # b stopped before its last picture
    (out / "c.json").unlink()  # c stopped before its JSON
    capsys.readouterr()
    assert main([*args, "--engine", "ray", "--workers", "1", "--resume"]) == 0
    assert "resume: 1 of 3 image(s) already done" in capsys.readouterr().err
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert set(after) == set(before)
    rewritten = {name for name in after if after[name] != before.get(name)}
    assert rewritten and {n[0] for n in rewritten} == {"b", "c"}  # a's files untouched
    assert main([*args, "--resume"]) == 0  # nothing left to do
    assert "resume: 3 of 3" in capsys.readouterr().err

    def no_ray(*a, **k):
        raise AssertionError("nothing left to segment: Ray must not start")

    monkeypatch.setattr("deop.engine.segment_ray", no_ray)
    assert main([*args, "--engine", "ray", "--resume"]) == 0


def test_missing_ray_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    root = make_benchmarks(tmp_path)
    code = main(["eval", "--benchmark", "voc21", "--data-root", str(root), "--engine", "ray", *SMALL])
    err = capsys.readouterr().err
    assert code == 2 and 'pip install "ray[data]' in err and "Traceback" not in err


def test_a_ray_address_that_does_not_answer_is_named(ray_session, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setattr(ray_session, "is_initialized", lambda: False)  # as a fresh process would be
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(scene(32, 32)).save(folder / "a.png")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    code = main(["segment", str(folder), "--classes", "sky", "--out", str(tmp_path / "out"), "--engine", "ray", *SMALL])
    err = capsys.readouterr().err
    assert code == 2 and "127.0.0.1:9 does not answer" in err and "ray start --head" in err


def test_import_deop_imports_neither_torch_nor_ray():
    code = ("import sys, deop, deop.engine, deop.evaluation, deop.benchmarks, deop.commands, deop.config; "
            "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


def test_engine_options_are_settings_with_flags_and_environment(monkeypatch):
    import argparse

    from deop.arguments import add_engine_arguments, engine_from_args
    from deop.errors import OptionError

    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    monkeypatch.setenv("DEOP_ENGINE", "ray")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    got = engine_from_args(parser.parse_args(["--workers", "3", "--gpus-per-worker", "0.5"]))
    assert got == EngineConfig("ray", "ray://head:10001", 3, 0.5, 4)
    with pytest.raises(OptionError, match="workers must be at least 1"):
        engine_from_args(parser.parse_args(["--workers", "0"]))


def test_bench_eval_measures_each_engine(tmp_path, segmenter):
    from deop.bench.throughput import format_records, measure

    out = measure(SMALL_CONFIG, tmp_path, n=3, masks=5, ray_workers=())
    assert [(r["engine"], r["threads"]) for r in out["records"]][-1] == ("local", 1)
    for r in out["records"]:
        assert r["images"] == 3 and r["images_per_second"] > 0 and r["startup_s"] > 0
        # one process scores one image after another: its pipeline time is part of its time per image
        assert 0 < r["scoring_s"] <= r["per_image_s"]
    assert out["ray_overhead_per_image_s"] is None and "| local |" in format_records(out)


def test_partials_sum_counts_and_keep_the_last_finish():
    from deop.evaluation import Partial

    a = Partial({("d", "r"): np.eye(2, dtype=np.int64)}, {"d": 1}, [], {"d": 0.5}, finished=10.0)
    b = Partial({("d", "r"): np.ones((2, 2), np.int64)}, {"d": 2}, [("d", "x", "bad")], {"d": 1.0}, finished=7.0)
    total = Partial().add(a).add(b)
    assert total.counts[("d", "r")].tolist() == [[2, 1], [1, 2]] and total.images == {"d": 3}
    assert total.seconds == {"d": 1.5} and total.failed == [("d", "x", "bad")] and total.finished == 10.0
    assert a.counts[("d", "r")].tolist() == [[1, 0], [0, 1]]  # the first partial was copied, not summed into
