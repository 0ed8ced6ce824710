"""``python -m deop bench-app``: requests to a running app, timed through its API."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import scene
from deop.bench import app as app_bench
from deop.bench.app import (
    AppBenchError,
    AppRecord,
    Case,
    changed_vocabulary,
    format_summary,
    stage_seconds,
    summarise,
)
from deop.commands import main

ROOT = Path(__file__).resolve().parent.parent
TINY_APP = "--random-weights --sam tiny --points-per-side 4 --max-side 256 --clip-size 224 --templates single"


def test_stage_seconds_count_shared_stages_once():
    both = {"methods": {
        "one-pass": {"timings": {"proposals": 2.0, "text_encoding": 0.5, "image_encoding": 0.25,
                                 "classification": 0.125, "total": 2.875}},
        "crop": {"timings": {"proposals": 2.0, "text_encoding": 0.5, "image_encoding": 4.0,
                             "classification": 0.0625, "total": 6.5625}},
    }}
    assert stage_seconds(both) == {"proposals": 2.0, "text_encoding": 0.5, "one-pass": 0.375, "crop": 4.0625}
    assert sum(stage_seconds(both).values()) == 2.0 + 0.5 + 0.25 + 0.125 + 4.0 + 0.0625
    one = {"methods": {"one-pass": both["methods"]["one-pass"]}}
    assert sum(stage_seconds(one).values()) == 2.875


def test_changed_vocabulary_adds_one_name_new_to_the_run():
    used = {"sky", "background", "cat", "shadow", "dog"}  # every name the run sends, as measure() starts
    first = changed_vocabulary("cat, shadow", used)
    second = changed_vocabulary("dog", used)
    assert first == "cat, shadow, floor" and second == "dog, light"
    assert {"floor", "light"} <= used
    # names as the app parses them: synonyms count, "person: man" is not a name
    assert app_bench.class_names("Person: man, woman\ncat") == {"person", "man", "woman", "cat"}


def test_summary_groups_requests_by_kind():
    rows = [AppRecord("first", "a.jpg", "x", "both", w, w - 1, [], n, {"proposals": w - 2, "crop": 1.0},
                      first_s=w / 2) for w, n in ((3.0, 10), (5.0, 30), (4.0, 20))]
    rows.append(AppRecord("vocabulary change", "a.jpg", "x, floor", "both", 1.5, 0.5, ["proposals"], 20,
                          {"proposals": 0.0, "crop": 0.0}))
    summary = summarise(rows)
    assert summary["first"] == {"n": 3, "wall_median_s": 4.0, "wall_min_s": 3.0, "wall_max_s": 5.0,
                                "first_median_s": 2.0, "pipeline_median_s": 3.0,
                                "stage_median_s": {"proposals": 2.0, "crop": 1.0}, "segments_median": 20}
    assert summary["vocabulary change"]["n"] == 1 and "warm-up" not in summary
    assert summary["vocabulary change"]["first_median_s"] == 1.5  # no streamed answer recorded: the whole one
    table = format_summary(summary)
    assert "first" in table and "proposals 2.00, crop 1.00" in table


def test_the_examples_file_resolves_like_the_app():
    cases = app_bench.load_cases(ROOT / "assets" / "examples.json")
    assert cases and all(Path(c.image).is_file() and c.vocabulary for c in cases)


@pytest.mark.slow
def test_measure_times_a_first_run_and_a_cached_rerun(app_url, tmp_path):
    path = tmp_path / "scene.png"
    Image.fromarray(scene(seed=31)).save(path)
    seen = []
    run = app_bench.measure(app_url, [Case(str(path), "sky, grass, ball")], report=seen.append)
    assert run.records == seen and [r.request for r in run.records] == ["warm-up", "first", "vocabulary change"]
    assert run.status and run.status.startswith("Ready") and "cpu" in run.status
    _, first, again = run.records
    assert first.image == again.image == "scene.png" and first.method == "both"
    assert first.cached == [] and again.cached == ["proposals", "image_encoding"]
    assert again.vocabulary == "sky, grass, ball, background"
    assert 0 < first.pipeline_s < first.wall_s and 0 < again.pipeline_s < again.wall_s
    assert 0 < first.first_s < first.wall_s  # the one-pass answer streams in before the crops are done
    assert first.stages.keys() == {"proposals", "text_encoding", "one-pass", "crop"}
    assert first.pipeline_s == pytest.approx(sum(first.stages.values()), abs=1e-3)
    assert again.stages["proposals"] == 0.0  # reused stages count zero
    assert first.segments == again.segments > 0 and run.warnings == []
    # measured again, the app answers the "first" request from its cache: said, not averaged in silently
    rerun = app_bench.measure(app_url, [Case(str(path), "sky, grass, ball")], warm_up=False)
    assert rerun.records[0].cached == ["proposals", "image_encoding"]
    assert len(rerun.warnings) == 1 and "scene.png" in rerun.warnings[0] and "not a first run" in rerun.warnings[0]


@pytest.mark.slow
def test_many_masks_gives_the_crop_baseline_realistic_work(app_url, tmp_path):
    """A random SAM keeps few masks at the default thresholds; many_masks asks the app for up to N."""
    path = tmp_path / "scene.png"
    Image.fromarray(scene(seed=33)).save(path)
    plain = app_bench.measure(app_url, [Case(str(path), "sky, grass")], warm_up=False).records[0]
    path2 = tmp_path / "scene2.png"
    Image.fromarray(scene(seed=34)).save(path2)
    many = app_bench.measure(app_url, [Case(str(path2), "sky, grass")], warm_up=False,
                             options=app_bench.many_masks(8)).records[0]
    assert plain.segments < many.segments <= 8


@pytest.mark.slow
def test_command_launches_the_app_and_writes_json(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = tmp_path / "scene.png"
    Image.fromarray(scene(seed=32)).save(path)
    out = tmp_path / "out" / "app.json"
    code = main(["bench-app", f"--app-args={TINY_APP}", "--images", str(path), "--classes", "sky, grass",
                 "--method", "one-pass", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "vocabulary change" in printed and "app status: Ready" in printed
    data = json.loads(out.read_text())
    assert data["launched"][0] == "app.py" and "--random-weights" in data["launched"]
    assert data["method"] == "one-pass" and "SAM tiny" in data["status"]
    assert [r["request"] for r in data["records"]] == ["warm-up", "first", "vocabulary change"]
    assert data["summary"]["first"]["n"] == 1 and data["machine"]["cpus"]


@pytest.mark.slow
def test_an_app_that_fails_to_start_is_reported_with_its_output(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code = main(["bench-app", "--app-args=--sam nonsense", "--images", "assets/shapes.png", "--classes", "ball"])
    err = capsys.readouterr().err
    assert code == 2 and "exited with code 2 before serving" in err and "invalid choice: 'nonsense'" in err


def test_bad_arguments_are_one_line_errors(capsys, tmp_path):
    assert main(["bench-app", "--images", "assets/shapes.png"]) == 2
    assert "--images needs --classes" in capsys.readouterr().err
    assert main(["bench-app", "--images", str(tmp_path / "missing.png"), "--classes", "x"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["bench-app", "--app", str(tmp_path / "none.py"), "--examples",
                 str(ROOT / "assets" / "examples.json")]) == 2
    assert "no app at" in capsys.readouterr().err
    with pytest.raises(AppBenchError, match="cannot connect"):
        app_bench.measure("http://127.0.0.1:9/", [])


def test_the_time_outside_the_pipeline_is_split_from_the_apps_record():
    server = {"started": 100.25, "decode": 0.02, "checks": 0.01, "release": 0.0, "answers": [
        {"views": {"one_pass": 0.01, "chart": 0.0}, "pipeline": 1.0, "render": 0.05, "session": 0.0, "gradio": 0.1},
        {"views": {"one_pass": 0.01, "chart": 0.04}, "pipeline": 2.0, "render": 0.1, "session": 0.0, "gradio": 0.2}]}
    out = app_bench.outside_pipeline(server, first_s=1.5, wall_s=4.0, submitted=100.0)
    assert out["render"] == 0.15 and out["gradio"] == pytest.approx(0.3) and out["view chart"] == 0.04
    assert out["client first"] == pytest.approx(1.5 - (0.03 + 1.0 + 0.05 + 0.1))
    assert out["client"] == pytest.approx(4.0 - (0.03 + 3.0 + 0.15 + 0.3))
    assert out["before handler"] == pytest.approx(0.25)
    assert app_bench.outside_pipeline({}, 1.0, 2.0) == {}  # an app without /timings
    rows = [AppRecord("first", "a.jpg", "x", "both", 4.0, 3.0, [], 5, {}, 1.5, server, out)]
    assert "outside the pipeline (median s): decode 0.020" in format_summary(summarise(rows))


def test_the_page_bench_refuses_what_it_cannot_do(capsys, tmp_path):
    """--browser sends the page's own widgets: --masks can only set them as a launched app's flags."""
    assert app_bench.app_flags(app_bench.many_masks(30)) == [
        "--pred-iou-thresh", "0.0", "--stability-score-thresh", "0.0", "--box-nms-thresh", "1.0", "--max-masks", "30"]
    args = ["bench-app", "--browser", "--url", "http://127.0.0.1:9/", "--images", "assets/shapes.png", "--classes", "x"]
    assert main([*args, "--masks", "30"]) == 2
    assert "--masks with --browser needs the app launched here" in capsys.readouterr().err
    assert main([*args, "--chromium", str(tmp_path / "no-chromium")]) == 2
    assert "no Chromium at" in capsys.readouterr().err
    space = ["bench-app", "--browser", "--url", "someone/space", "--chromium", sys.executable, "--images",
             "assets/shapes.png", "--classes", "x"]
    assert main(space) == 2
    assert "--browser needs the page's URL, not 'someone/space'" in capsys.readouterr().err


def test_the_page_bench_json_keeps_the_client_machine(capsys, tmp_path, monkeypatch):
    """With --url the JSON names the measuring machine as the client, and the browser apart."""
    from deop.commands import bench_app

    monkeypatch.setattr(bench_app, "_page", lambda args, url, cases, options: {
        "url": url, "driver": "chromium", "browser": "1.0", "summary": {}, "records": []})
    out = tmp_path / "page.json"
    assert main(["bench-app", "--browser", "--url", "http://127.0.0.1:9/", "--images", "assets/shapes.png",
                 "--classes", "x", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["client"]["cpus"] and data["driver"] == "chromium" and data["launched"] is None


@pytest.mark.slow
@pytest.mark.browser
def test_the_page_bench_times_a_visitors_answers_in_chromium(app_url, tmp_path):
    """bench-app --browser in this app's page: uploading, typing, pressing Segment, then typing one class
    more, which the page re-runs by itself; each answer timed to its images drawn."""
    from deop.bench.browser import find_chromium, format_page_summary, measure_page, summarise_page

    try:
        chromium = find_chromium()
    except AppBenchError:
        if os.environ.get("DEOP_REQUIRE_BROWSER"):
            raise
        pytest.skip("Chromium is not installed; .ci/run installs it")
    path = tmp_path / "scene.png"
    Image.fromarray(scene(seed=35)).save(path)
    seen = []
    version, records = measure_page(app_url, [Case(str(path), "sky, grass")], chromium, report=seen.append)
    assert version and records == seen
    assert [(r.request, r.image) for r in records] == [("warm-up", "warm-up.png"), ("first", "scene.png"),
                                                       ("vocabulary change", "scene.png")]
    _, first, edit = records
    assert 0 < first.first_s <= first.wall_s
    # the overlays' base image and a mask per class shown: each fetched once (both overlays share the base)
    assert first.images >= 2 and 1 <= first.files <= first.images and first.bytes > 0
    assert edit.vocabulary.startswith("sky, grass, ") and edit.images >= 2 and edit.files <= edit.images
    # timed from the request carrying the edit, which the page sends once typing has paused for 0.6 s
    assert 0 < edit.first_s <= edit.wall_s and 0.59 <= edit.typed_to_sent_s < 5 and edit.reruns == 1
    summary = summarise_page(records)
    assert summary["vocabulary change"]["n"] == 1 and summary["first"]["wall_median_s"] == round(first.wall_s, 3)
    assert "sent" in format_page_summary(summary)
