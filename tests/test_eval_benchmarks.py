"""`python -m deop eval --benchmark` end to end on the synthetic benchmarks, with the local engine: the
papers' table in JSON, Markdown, CSV and a plot, variants swept in one run, and every bad input named while
the run goes on."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from benchmark_support import benchmark_root, make_benchmarks  # noqa: F401
from conftest import scene
from deop.commands import main

FLAGS = ["--random-weights", "--device", "cpu", "--sam", "tiny", "--points-per-side", "4", "--pred-iou-thresh", "0",
         "--stability-score-thresh", "0", "--max-side", "128", "--clip-size", "224", "--templates", "single"]


def test_training_free_protocol_table_with_variants(benchmark_root, tmp_path, segmenter, capsys):  # noqa: F811
    out = {k: tmp_path / f"r.{k}" for k in ("json", "md", "csv", "png")}
    # VOC21 and VOC20 take NACLIP's whole-image inference (the sliding window is test_benchmarks.py's)
    code = main(["eval", "--benchmark", "voc21,voc20", "--data-root", str(benchmark_root), "--method", "dense",
                 "--protocol", "training-free", "--variants", "naclip,maskclip", "--limit", "1",
                 "--json", str(out["json"]), "--markdown", str(out["md"]), "--csv", str(out["csv"]),
                 "--plot", str(out["png"]), *FLAGS])
    assert code == 0, capsys.readouterr().err
    rep = json.loads(out["json"].read_text())
    assert rep["runs"] == ["dense/naclip", "dense/maskclip"]
    assert rep["settings"]["protocol"] == "training-free" and rep["settings"]["protocol_templates"] == "single"
    for key, classes in (("voc21", 21), ("voc20", 20)):
        b = rep["benchmarks"][key]
        assert (b["classes"], b["images"], b["failed"], b["expected_images"]) == (classes, 1, [], 1449)
        for run in rep["runs"]:
            assert 0.0 <= b["miou"][run] <= 1.0 and len(b["per_class_iou"][run]) == classes
    assert rep["benchmarks"]["voc21"]["per_class_iou"]["dense/naclip"].keys() >= {"background", "person"}
    for run in rep["runs"]:
        row = rep["table"][run]
        assert row["average"] == pytest.approx((row["voc21"] + row["voc20"]) / 2, abs=1e-6)
    md = out["md"].read_text()
    assert "| method | VOC21 | VOC20 | Avg. |" in md and "| dense/naclip |" in md
    rows = list(csv.reader(out["csv"].open()))
    assert rows[0] == ["method", "voc21", "voc20", "average"] and [r[0] for r in rows[1:]] == rep["runs"]
    per_class = list(csv.reader((tmp_path / "r_per_class.csv").open()))
    assert per_class[0] == ["benchmark", "class_index", "class", "method", "iou"] and len(per_class) == 1 + 2 * 41
    assert out["png"].read_bytes()[:4] == b"\x89PNG"
    assert "| dense/maskclip |" in capsys.readouterr().out


def test_pipeline_method_on_a_benchmark_names_rows_by_method(benchmark_root, tmp_path, segmenter):  # noqa: F811
    out = tmp_path / "r.json"
    assert main(["eval", "--benchmark", "cityscapes", "--data-root", str(benchmark_root), "--method", "one-pass",
                 "--limit", "1", "--json", str(out), *FLAGS]) == 0
    rep = json.loads(out.read_text())
    assert rep["runs"] == ["one-pass"] and rep["benchmarks"]["cityscapes"]["images"] == 1


def test_bad_files_are_named_and_the_others_counted(tmp_path, segmenter, capsys):
    root = make_benchmarks(tmp_path / "data")
    ade = root / "ADEChallengeData2016/images/validation/ADE_val_00000002.jpg"
    ade.write_bytes(ade.read_bytes()[: len(ade.read_bytes()) // 2])  # a truncated JPEG
    bad = root / "cityscapes/gtFine/val/lindau/lindau_000000_000019_gtFine_labelTrainIds.png"
    label = np.array(Image.open(bad))
    label[0, :2] = (33, 40)  # labelIds, not trainIds
    Image.fromarray(label).save(bad)
    (root / "cityscapes/leftImg8bit/val/munster/munster_000000_000019_leftImg8bit.png").unlink()  # a label alone
    out = tmp_path / "r.json"
    code = main(["eval", "--benchmark", "ade20k,cityscapes", "--data-root", str(root), "--method", "dense",
                 "--json", str(out), *FLAGS])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    rep = json.loads(out.read_text())
    ade_failed = rep["benchmarks"]["ade20k"]["failed"]
    assert rep["benchmarks"]["ade20k"]["images"] == 1 and [f["name"] for f in ade_failed] == ["ADE_val_00000002"]
    assert "truncated" in ade_failed[0]["error"].lower() and str(ade) in ade_failed[0]["error"]
    city = rep["benchmarks"]["cityscapes"]
    assert city["images"] == 1 and len(city["failed"]) == 2
    errors = {f["name"]: f["error"] for f in city["failed"]}
    assert "33, 40" in errors["lindau/lindau_000000_000019"] and str(bad) in errors["lindau/lindau_000000_000019"]
    assert "has no image" in errors["munster/munster_000000_000019"]
    assert "ADE_val_00000002" in err and "lindau_000000_000019" in err


def test_truncated_jpeg_in_folder_mode_is_skipped_not_fatal(tmp_path, segmenter, capsys):
    """Four ADE20K-style images, the second one truncated: three are scored, the bad one is named."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for i in range(4):
        Image.fromarray(scene(48, 64, seed=i)).save(images / f"ADE_val_{i:08d}.jpg")
        Image.fromarray((np.arange(48 * 64).reshape(48, 64) % 3).astype(np.uint8)).save(labels / f"ADE_val_{i:08d}.png")
    broken = images / "ADE_val_00000001.jpg"
    broken.write_bytes(broken.read_bytes()[:300])
    (tmp_path / "classes.txt").write_text("wall\nbuilding\nsky\n")
    out = tmp_path / "r.json"
    code = main(["eval", "--images", str(images), "--labels", str(labels), "--classes", str(tmp_path / "classes.txt"),
                 "--method", "dense", "--json", str(out), *FLAGS])
    err = capsys.readouterr().err
    assert code == 1 and "ADE_val_00000001" in err and "Traceback" not in err
    rep = json.loads(out.read_text())
    assert rep["images"] == 3 and [f["name"] for f in rep["failed"]] == ["ADE_val_00000001"]
    assert rep["methods"]["dense"]["pixels"] == 3 * 48 * 64


def test_missing_layouts_unknown_names_and_settings(benchmark_root, tmp_path, segmenter, capsys):  # noqa: F811
    partial = tmp_path / "partial"
    shutil.copytree(benchmark_root / "VOCdevkit", partial / "VOCdevkit")
    out = tmp_path / "r.json"
    code = main(["eval", "--benchmark", "voc20,coco-stuff", "--data-root", str(partial), "--method", "dense",
                 "--limit", "1", "--json", str(out), *FLAGS])
    assert code == 1
    skipped = json.loads(out.read_text())["skipped"]
    assert list(skipped) == ["coco-stuff"] and "coco_stuff164k/images/val2017" in skipped["coco-stuff"]
    assert "coco_stuff164k.py" in skipped["coco-stuff"]
    capsys.readouterr()
    assert main(["eval", "--benchmark", "ade847", "--data-root", str(partial), *FLAGS]) == 2
    assert "prepare_ade20k_full_sem_seg.py" in capsys.readouterr().err
    assert main(["eval", "--benchmark", "pascal", "--data-root", str(partial), *FLAGS]) == 2
    assert "unknown benchmark 'pascal'" in capsys.readouterr().err
    assert main(["eval", "--benchmark", "voc21", "--data-root", str(partial), "--variants", "sclip,nacl",
                 *FLAGS]) == 2
    err = capsys.readouterr().err
    assert "nacl" in err and "clearclip" in err and "naclip-noprior" in err
    assert main(["eval", "--benchmark", "voc21", "--data-root", str(partial), "--protocol", "training-free",
                 *FLAGS]) == 2
    assert "--method dense" in capsys.readouterr().err
    assert main(["eval", "--benchmark", "voc21", *FLAGS]) == 2
    assert "--data-root" in capsys.readouterr().err
