"""The benchmark registry on synthetic copies of the ten benchmarks (tests/benchmark_support.py): layouts,
image counts, class counts, label decoding at known pixels, the bad-input cases; and the training-free
protocol's arithmetic (sliding windows, synonyms, background threshold, SCLIP's area rule)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark_support import COUNTS, IGNORE, KNOWN, W, benchmark_root, make_benchmarks  # noqa: F401
from deop import protocol as tf
from deop.benchmarks import BENCHMARKS, PAPER_EIGHT, Protocol, decode_label, get_benchmarks, manifest
from deop.errors import DatasetError, OptionError


def test_ten_benchmarks_with_their_class_files():
    assert list(BENCHMARKS) == ["voc21", "context60", "coco-object", "voc20", "context59", "coco-stuff",
                                "cityscapes", "ade20k", "ade847", "context459"]
    assert set(PAPER_EIGHT) < set(BENCHMARKS)
    for b in BENCHMARKS.values():
        assert len(b.vocabulary()) == b.n_classes
    voc = BENCHMARKS["voc21"].vocabulary()
    assert voc.names[0] == "background" and len(voc.classes[0].prompts) == 26 and "sky" in voc.classes[0].prompts
    assert voc.classes[15].prompts[:2] == ("person", "person in shirt")
    # nothing merged: COCO-Object's background words include "bed", which is also a class of its own
    coco = BENCHMARKS["coco-object"].vocabulary()
    assert "bed" in coco.classes[0].prompts and "bed" in coco.names
    # ADE-847's names keep their commas: one name, no synonyms
    ade = BENCHMARKS["ade847"].vocabulary()
    assert ade.classes[1].prompts == ("building, edifice",)
    # ClearCLIP prompts VOC21 with a literal "background", the same 21 classes
    assert BENCHMARKS["voc21"].vocabulary("clearclip").classes[0].prompts == ("background",)


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_layout_count_classes_and_decoded_pixels(benchmark_root, name):  # noqa: F811
    b = BENCHMARKS[name]
    layout, _, samples = manifest(b, benchmark_root)
    assert len(samples) == COUNTS[name] and not any(s.error for s in samples)
    _, _, _, left, right, zero = KNOWN[name]
    label = decode_label(samples[0].label, layout, b.n_classes)
    assert label.dtype == np.int64
    assert (label[5, 5], label[5, W - 5], label[0, 0], label[-1, 3]) == (left, right, zero, IGNORE)
    assert label.max() < b.n_classes


def test_limit_takes_the_first_images(benchmark_root):  # noqa: F811
    _, _, samples = manifest(BENCHMARKS["cityscapes"], benchmark_root, limit=2)
    assert [s.name for s in samples] == ["frankfurt/frankfurt_000000_000294", "lindau/lindau_000000_000019"]


def test_a_data_root_without_the_layout_names_the_paths_and_the_script(tmp_path):
    with pytest.raises(DatasetError) as err:
        manifest(BENCHMARKS["ade847"], tmp_path)
    message = str(err.value)
    assert "ADE20K_2021_17_01/images_detectron2/validation" in message and "prepare_ade20k_full_sem_seg.py" in message
    with pytest.raises(DatasetError, match="ImageSets/Segmentation/val.txt"):
        manifest(BENCHMARKS["voc21"], tmp_path)
    with pytest.raises(DatasetError, match="not a folder"):
        manifest(BENCHMARKS["voc21"], tmp_path / "nowhere")


def test_missing_images_labels_and_split_entries_are_named(tmp_path):
    root = make_benchmarks(tmp_path)
    voc = root / "VOCdevkit/VOC2012"
    (voc / "ImageSets/Segmentation/val.txt").write_text("2008_000001\n2008_000009\n")
    _, _, samples = manifest(BENCHMARKS["voc21"], root)
    assert not samples[0].error and "names 2008_000009" in samples[1].error and "is missing" in samples[1].error
    ade = root / "ADEChallengeData2016"
    (ade / "annotations/validation/ADE_val_00000002.png").unlink()
    Image.fromarray(np.ones((4, 4), np.uint8)).save(ade / "annotations/validation/ADE_val_00000007.png")
    _, _, samples = manifest(BENCHMARKS["ade20k"], root)
    errors = {s.name: s.error for s in samples}
    assert errors["ADE_val_00000001"] == ""
    assert errors["ADE_val_00000002"].startswith("no label") and "ADE_val_00000002.png" in errors["ADE_val_00000002"]
    assert "has no image" in errors["ADE_val_00000007"]


def test_label_values_outside_the_range_name_the_file_and_values(tmp_path):
    b = BENCHMARKS["cityscapes"]
    path = tmp_path / "x_gtFine_labelTrainIds.png"
    label = np.zeros((8, 8), np.uint8)
    label[0, :3] = (19, 33, 255)  # 255 is ignore; 19 and 33 are labelIds, not trainIds
    Image.fromarray(label).save(path)
    with pytest.raises(DatasetError) as err:
        decode_label(path, b.layouts[0], b.n_classes)
    assert str(path) in str(err.value) and "19, 33" in str(err.value) and "0..18" in str(err.value)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(rgb)
    with pytest.raises(DatasetError, match="not RGB"):
        decode_label(rgb, b.layouts[0], b.n_classes)


def test_unknown_benchmark_lists_the_known_ones():
    with pytest.raises(OptionError) as err:
        get_benchmarks("voc21,pascal")
    assert "'pascal'" in str(err.value) and "context459" in str(err.value)
    assert [b.name for b in get_benchmarks("paper")] == list(PAPER_EIGHT)


# -- the training-free protocol ---------------------------------------------------------------------------------
def test_protocol_resize_is_mmsegmentations_keep_ratio_rule():
    p = BENCHMARKS["ade20k"].protocol("naclip")
    assert tf.protocol_size((512, 683), p) == (336, 448)  # int(683 * 336 / 512 + 0.5)
    assert tf.protocol_size((100, 3000), p) == (68, 2048)  # the long side's limit wins
    assert tf.protocol_size((48, 64), p) == (336, 448)  # small images are scaled up


def _reference_windows(h, w, crop, stride):
    """mmsegmentation's slide_inference loop (as SCLIP, ClearCLIP and NACLIP copy it), re-derived."""
    out = []
    for hi in range(max(h - crop + stride - 1, 0) // stride + 1):
        for wi in range(max(w - crop + stride - 1, 0) // stride + 1):
            y1, x1 = hi * stride, wi * stride
            y2, x2 = min(y1 + crop, h), min(x1 + crop, w)
            out.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return out


@pytest.mark.parametrize("shape", [(300, 410), (224, 224), (336, 500), (100, 150)])
def test_windows_are_the_official_ones_and_cover_every_pixel(shape):
    boxes = tf.windows(*shape, 224, 112)
    assert boxes == _reference_windows(*shape, 224, 112)
    cover = np.zeros(shape, int)
    for y0, y1, x0, x1 in boxes:
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1
    assert tf.windows(*shape, 0, 0) == [(0, shape[0], 0, shape[1])]


def test_sliding_average_counts_each_covering_window_once(clip, monkeypatch):
    """On an image that is not a multiple of the stride, each pixel's logit is the mean of the values of
    exactly the windows that cover it (each window answers one value everywhere: a function of its crop)."""
    h, w = 300, 410
    protocol = Protocol(300, 224, 112, 40.0, "test")
    yy, xx = np.mgrid[:h, :w]
    image = np.stack([xx * 255 // w, yy * 255 // h, np.zeros_like(xx)], axis=-1).astype(np.uint8)

    def value(crop: torch.Tensor) -> torch.Tensor:
        return crop[0].mean() + 10 * crop[1].mean()

    def fake(clip_, crops, variant, n_severed, partial):
        feats = torch.zeros((len(crops), 2, 3, 3))
        feats[:, 0] = torch.stack([value(c) for c in crops])[:, None, None]
        return feats, tuple(crops.shape[-2:]), (0, 0)

    monkeypatch.setattr(tf, "_window_features", fake)
    text = torch.tensor([[1.0, 0.0]])
    queries = tf.Queries(text, torch.tensor([0]), 1)
    got = tf.protocol_logits(clip, image, queries, "deop", protocol)[0].numpy()
    from deop.classify import _normalise, image_tensor

    pixels = _normalise(image_tensor(image, torch.device("cpu"))[None], clip)[0]
    total, count = np.zeros((h, w)), np.zeros((h, w))
    for y0, y1, x0, x1 in _reference_windows(h, w, 224, 112):
        total[y0:y1, x0:x1] += float(value(pixels[:, y0:y1, x0:x1]))
        count[y0:y1, x0:x1] += 1
    np.testing.assert_allclose(got, total / count, rtol=1e-5, atol=1e-5)


def test_protocol_labels_take_the_best_synonym_and_the_background_rule():
    # class 0 (background) has two prompts, class 1 one, class 2 one; four pixels
    queries = tf.Queries(torch.zeros(4, 2), torch.tensor([0, 0, 1, 2]), 3)
    logits = torch.tensor([[0.9, 0.0, 0.0, 0.0],   # prompt 0 (background)
                           [0.0, 0.8, 0.0, 0.0],   # prompt 1 (background)
                           [0.0, 0.0, 0.9, 0.3],   # class 1
                           [0.0, 0.0, 0.0, 0.31]])  # class 2: barely the best on pixel 3
    labels = tf.protocol_labels(logits.reshape(4, 1, 4), queries, Protocol(0, 0, 0, 40.0, "t", threshold=0.0), 0)
    assert labels.tolist() == [[0, 0, 1, 2]]
    # pixel 3's best probability is low (two prompts nearly tie): with a threshold it becomes the background
    labels = tf.protocol_labels(logits.reshape(4, 1, 4), queries, Protocol(0, 0, 0, 40.0, "t", threshold=0.7), 0)
    assert labels.tolist() == [[0, 0, 1, 0]]


def test_sclip_area_rule_drops_a_class_on_too_few_pixels():
    queries = tf.Queries(torch.zeros(3, 2), torch.tensor([0, 1, 2]), 3)
    logits = torch.zeros(3, 1, 20)
    logits[1, 0, :19] = 1.0  # class 1 wins 19 pixels
    logits[2, 0, 19] = 1.0   # class 2 wins one: 1/20 of the non-background pixels, under 0.1
    logits[0, 0, 19] = 0.5   # the background is second there
    p = Protocol(0, 0, 0, 40.0, "t", area_threshold=0.1)
    assert tf.protocol_labels(logits, queries, p, 0)[0].tolist() == [1] * 19 + [0]
    assert tf.protocol_labels(logits, queries, Protocol(0, 0, 0, 40.0, "t"), 0)[0].tolist() == [1] * 19 + [2]
