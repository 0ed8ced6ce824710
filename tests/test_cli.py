"""`python -m deop segment` end to end on generated images, and its error paths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import scene
from deop import rle
from deop.commands import main

SMALL = ["--random-weights", "--device", "cpu", "--sam", "tiny", "--points-per-side", "4", "--pred-iou-thresh", "0",
         "--stability-score-thresh", "0", "--max-side", "256", "--clip-size", "224"]


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(scene(seed=1)).save(folder / "a.png")
    Image.fromarray(scene(96, 128, seed=2)).save(folder / "b.jpg")
    return folder


def test_segment_folder_writes_overlay_labels_and_json(images, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["segment", str(images), "--classes", "sky, grass, ball", "--method", "both", "--out", str(out),
                 *SMALL])
    assert code == 0
    for stem, shape in (("a", (120, 160)), ("b", (96, 128))):
        labels = np.array(Image.open(out / f"{stem}_labels.png"))
        assert labels.shape == shape
        assert Image.open(out / f"{stem}_overlay.png").size[0] == shape[1]
        assert (out / f"{stem}_overlay_crop.png").exists() and (out / f"{stem}_labels_crop.png").exists()
        data = json.loads((out / f"{stem}.json").read_text())
        assert data["classes"] == ["sky", "grass", "ball"]
        assert data["random_weights"] is True
        for method in ("one-pass", "crop"):
            m = data["methods"][method]
            assert {"proposals", "image_encoding", "text_encoding", "classification", "total"} <= set(m["timings"])
            for seg in m["segments"]:
                assert {"label", "score", "area", "box"} <= set(seg)
                assert rle.area(data["segment_masks"][seg["id"]]) == seg["area"]
    assert "RANDOM WEIGHTS" in capsys.readouterr().err


def test_bad_image_in_batch_is_reported_and_others_processed(images, tmp_path, capsys):
    (images / "broken.png").write_bytes(b"this is not a png")
    out = tmp_path / "out"
    code = main(["segment", str(images), "--classes", "sky", "--method", "one-pass", "--out", str(out), *SMALL])
    err = capsys.readouterr().err
    assert code == 1
    assert "broken.png" in err and "Traceback" not in err
    assert (out / "a.json").exists() and (out / "b.json").exists() and not (out / "broken.json").exists()


def test_empty_vocabulary_is_one_line_error(images, tmp_path, capsys):
    code = main(["segment", str(images), "--classes", " , ", "--out", str(tmp_path / "o"), *SMALL])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and len(err.splitlines()) == 1


def test_missing_input_is_an_error(tmp_path, capsys):
    code = main(["segment", str(tmp_path / "nope.png"), "--classes", "cat", "--out", str(tmp_path), *SMALL])
    assert code == 2 and "no such file" in capsys.readouterr().err


def test_offline_without_weights_gives_the_clear_error(tmp_path, monkeypatch, capsys):
    """No network, no checkpoint: one line naming the file, where to put it, and --random-weights."""
    import urllib.error
    import urllib.request

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    Image.fromarray(scene()).save(tmp_path / "x.png")
    code = main(["segment", str(tmp_path / "x.png"), "--classes", "cat", "--device", "cpu",
                 "--checkpoint-dir", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "sam_vit_b_01ec64.pth" in err and str(tmp_path / "ckpt") in err and "--random-weights" in err
    assert not (tmp_path / "ckpt" / "sam_vit_b_01ec64.pth").exists()


def test_module_entry_point_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "deop", "segment", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "--classes" in proc.stdout


def test_output_names_cannot_escape_the_output_folder(tmp_path):
    from deop.commands.segment import unique_stems

    stems = unique_stems([Path("../../etc/passwd"), Path("a/x.png"), Path("b/x.png"), Path("..png")])
    assert stems[1:3] == ["x", "x_1"]
    assert all("/" not in s and ".." not in s and s for s in stems)


def test_random_weight_runs_keep_every_mask_unless_thresholds_are_given():
    from deop.arguments import options_from_args
    from deop.commands import build_parser

    parser = build_parser()
    base = ["segment", "x.png", "--classes", "cat"]
    real = options_from_args(parser.parse_args(base)).proposals
    rand = options_from_args(parser.parse_args([*base, "--random-weights"])).proposals
    explicit = options_from_args(parser.parse_args([*base, "--random-weights", "--pred-iou-thresh", "0.5"])).proposals
    assert (real.pred_iou_thresh, real.stability_score_thresh) == (0.88, 0.95)
    assert (rand.pred_iou_thresh, rand.stability_score_thresh) == (0.0, 0.0)
    assert explicit.pred_iou_thresh == 0.5


@pytest.mark.parametrize("n_segments,crop_seconds,expected", [
    (1, 0.1, "crops 5.0x faster than one pass with only 1 segment"),
    (3, 0.1, "crops 5.0x faster than one pass with only 3 segments"),
    (3, 2.0, "one-pass CLIP stage 4.0x faster than crops"),
])
def test_timing_line_says_who_won(n_segments, crop_seconds, expected):
    from deop.engine import timing_line
    from deop.result import MethodResult, Segment, SegmentationResult

    def method(name: str, image_seconds: float) -> MethodResult:
        timings = {"proposals": 1.0, "image_encoding": image_seconds, "text_encoding": 0.0, "classification": 0.0,
                   "total": 1.0 + image_seconds}
        segments = [Segment(i, (0, 0, 1, 1), 1, 0, 1.0, [("a", 1.0)]) for i in range(n_segments)]
        return MethodResult(name, np.zeros((2, 2), np.int32), segments, timings)

    result = SegmentationResult(["a"], (2, 2), {"one-pass": method("one-pass", 0.5),
                                                "crop": method("crop", crop_seconds)}, comparison=("one-pass", "crop"))
    assert timing_line(result).endswith(expected)


def test_every_sam_option_flag_reaches_the_proposal_config():
    from deop.arguments import options_from_args
    from deop.commands import build_parser

    flags = {"--points-per-side": ("points_per_side", 7), "--points-per-batch": ("points_per_batch", 9),
             "--pred-iou-thresh": ("pred_iou_thresh", 0.31),
             "--stability-score-thresh": ("stability_score_thresh", 0.32),
             "--box-nms-thresh": ("box_nms_thresh", 0.33), "--min-mask-region-area": ("min_mask_region_area", 34),
             "--crop-n-layers": ("crop_n_layers", 1), "--max-masks": ("max_masks", 35),
             "--sam-input-size": ("sam_input_size", 640)}
    argv = ["segment", "x.png", "--classes", "cat"] + [str(v) for flag, (_, value) in flags.items()
                                                        for v in (flag, value)]
    proposals = options_from_args(build_parser().parse_args(argv)).proposals
    assert {name: getattr(proposals, name) for name, _ in flags.values()} == dict(flags.values())


def test_a_bug_is_an_internal_error_with_an_id_and_its_traceback(images, tmp_path, monkeypatch, capsys):
    """Only our own errors are one-line messages; anything else is a bug: shown with an id to quote and
    logged with its traceback, never passed off as a user error."""
    from deop.pipeline import Segmenter

    def broken(self, *args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(Segmenter, "segment", broken)
    code = main(["segment", str(images / "a.png"), "--classes", "sky", "--out", str(tmp_path / "o"), *SMALL])
    err = capsys.readouterr().err
    assert code == 3 and "error: internal error (id " in err
    assert "Traceback" in err and "KeyError: 'a bug'" in err
