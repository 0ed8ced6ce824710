"""Evaluation maths on hand-computed arrays, and the eval command end to end on a tiny synthetic dataset."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from conftest import scene
from deop import evaluation as evaluate
from deop.benchmarks import IGNORE, decode_label
from deop.commands import main
from deop.evaluation import FOLDER_LAYOUT, IGNORE_INDEX, ConfusionMatrix, read_classes


def test_iou_by_hand():
    truth = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 1, 1, 1], [0, -1, 1, 0]])  # the 255 pixel's prediction is ignored
    m = ConfusionMatrix(3)
    m.update(truth, pred)
    # class 0: TP 2, GT 4, predicted 2 -> 2 / 4; class 1: TP 3, GT 3, predicted 4 -> 3 / 4
    np.testing.assert_allclose(m.iou()[:2], [0.5, 0.75])
    assert math.isnan(m.iou()[2])  # class 2 neither present nor predicted: skipped
    assert m.miou() == pytest.approx(0.625)
    assert m.pixel_accuracy() == pytest.approx(5 / 7)  # the unlabelled pixel counts as wrong


def test_predicted_but_absent_class_counts_zero():
    m = ConfusionMatrix(2)
    m.update(np.array([0, 0]), np.array([0, 1]))
    np.testing.assert_allclose(m.iou(), [0.5, 0.0])
    assert m.miou() == pytest.approx(0.25)


def test_accumulates_over_images_and_rejects_bad_values():
    m = ConfusionMatrix(2)
    m.update(np.array([0, 1]), np.array([0, 1]))
    m.update(np.array([1, 1]), np.array([0, 1]))
    assert m.counts[:, :2].tolist() == [[1, 0], [1, 2]]
    with pytest.raises(ValueError):
        m.update(np.array([2]), np.array([0]))
    with pytest.raises(ValueError):
        m.update(np.array([0]), np.array([5]))


def test_read_classes_keeps_index_order_and_synonyms(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("sky\n# comment\ngrass: lawn, turf\nperson: man, woman\n")
    vocab = read_classes(f)
    assert vocab.names == ["sky", "grass", "person"]
    assert vocab.classes[1].prompts == ("grass", "lawn", "turf")
    f.write_text("cat, dog\n")
    with pytest.raises(ValueError):
        read_classes(f)


def make_dataset(root, n=2):
    images, labels = root / "images", root / "labels"
    images.mkdir()
    labels.mkdir()
    for i in range(n):
        img = scene(96, 128, seed=i)
        Image.fromarray(img).save(images / f"img{i}.png")
        label = np.zeros((96, 128), dtype=np.uint8)
        label[48:] = 1
        label[40:70, 20:50] = 2
        label[:4] = 255
        Image.fromarray(label).save(labels / f"img{i}.png")
    classes = root / "classes.txt"
    classes.write_text("sky\ngrass: lawn\nball\n")
    return images, labels, classes


FLAGS = ["--random-weights", "--device", "cpu", "--sam", "tiny", "--points-per-side", "4", "--pred-iou-thresh", "0",
         "--stability-score-thresh", "0", "--max-side", "128", "--clip-size", "224"]


def test_eval_command_end_to_end(tmp_path, segmenter):
    images, labels, classes = make_dataset(tmp_path)
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    code = main(["eval", "--images", str(images), "--labels", str(labels), "--classes", str(classes),
                 "--method", "both", "--json", str(out_json), "--markdown", str(out_md), *FLAGS])
    assert code == 0
    rep = json.loads(out_json.read_text())
    assert rep["images"] == 2 and set(rep["methods"]) == {"one-pass", "crop"}
    for scores in rep["methods"].values():
        assert 0.0 <= scores["miou"] <= 1.0 and 0.0 <= scores["pixel_accuracy"] <= 1.0
        assert list(scores["per_class_iou"]) == ["sky", "grass", "ball"]
        assert all(v is None or 0.0 <= v <= 1.0 for v in scores["per_class_iou"].values())
        assert scores["pixels"] == 2 * 92 * 128  # ignored rows excluded
    assert "| one-pass |" in out_md.read_text()


def load_label(path) -> np.ndarray:
    """A folder dataset's label PNG as class indices, 255 kept (``ConfusionMatrix``'s default ignore)."""
    truth = decode_label(path, FOLDER_LAYOUT, 65536)
    return np.where(truth == IGNORE, IGNORE_INDEX, truth)


def test_eval_with_ground_truth_predictor_scores_one(tmp_path, monkeypatch, segmenter):
    from deop.images import image_key, load_image

    images, labels, classes = make_dataset(tmp_path)
    truths = {image_key(load_image(images / f"img{i}.png")): load_label(labels / f"img{i}.png") for i in range(2)}

    def perfect(self, spec, image):
        truth = truths[image_key(image)]
        return {"one-pass": np.where(truth == 255, 0, truth)}

    monkeypatch.setattr(evaluate.Scorer, "predict", perfect)
    out_json = tmp_path / "r.json"
    assert main(["eval", "--images", str(images), "--labels", str(labels), "--classes", str(classes),
                 "--method", "one-pass", "--json", str(out_json), *FLAGS]) == 0
    scores = json.loads(out_json.read_text())["methods"]["one-pass"]
    assert scores["miou"] == 1.0 and scores["pixel_accuracy"] == 1.0
