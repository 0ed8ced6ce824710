"""Tiny synthetic copies of the ten benchmarks in their real layouts (mmsegmentation's and detectron2's), with
labels drawn so that every decoding rule matters: reduce-zero, 255 and 65535 ignore, trainIds beside decoy
label files, 16-bit TIFFs, split lists that leave images out.

Every label is the same picture of raw values: the left half RAW["left"], the right half RAW["right"], the
bottom rows RAW["ignore"] (the layout's ignore value), the top-left pixel RAW["zero"] (0). ``KNOWN`` gives,
per benchmark, the raw values and what each must decode to.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import scene

H, W = 48, 64
IGNORE = -1

# benchmark: (left raw, right raw, ignore raw, decoded left, decoded right, decoded zero)
KNOWN = {
    "voc21": (15, 20, 255, 15, 20, 0),
    "voc20": (15, 20, 255, 14, 19, IGNORE),
    "context60": (5, 59, 255, 5, 59, 0),
    "context59": (5, 59, 255, 4, 58, IGNORE),
    "context459": (300, 458, 65535, 300, 458, 0),
    "coco-stuff": (1, 170, 255, 1, 170, 0),
    "coco-object": (1, 80, 255, 1, 80, 0),
    "cityscapes": (0, 18, 255, 0, 18, 0),
    "ade20k": (1, 150, 255, 0, 149, IGNORE),
    "ade847": (255, 846, 65535, 255, 846, 0),
}
# images each benchmark's split holds here (VOC's JPEGImages has one more, outside val.txt)
COUNTS = {"voc21": 2, "voc20": 2, "context60": 2, "context59": 2, "context459": 2, "coco-stuff": 2,
          "coco-object": 2, "cityscapes": 3, "ade20k": 2, "ade847": 2}


def label_picture(left: int, right: int, ignore: int, dtype=np.uint8) -> np.ndarray:
    label = np.full((H, W), left, dtype=dtype)
    label[:, W // 2:] = right
    label[-6:] = ignore
    label[0, 0] = 0
    return label


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene(H, W, seed=seed)).save(path)


def _label(path: Path, name: str) -> None:
    left, right, ignore = KNOWN[name][:3]
    path.parent.mkdir(parents=True, exist_ok=True)
    wide = path.suffix == ".tif"
    Image.fromarray(label_picture(left, right, ignore, np.uint16 if wide else np.uint8)).save(path)


def make_benchmarks(root: Path) -> Path:
    """All ten benchmarks under `root`, as their preparation scripts leave them."""
    ids = ["2008_000001", "2008_000002"]
    # PASCAL VOC 2012 (voc21, voc20): a palette PNG like the real ones; a third image outside the split
    voc = root / "VOCdevkit/VOC2012"
    for i, sid in enumerate([*ids, "2008_000003"]):
        _image(voc / "JPEGImages" / f"{sid}.jpg", i)
        label = Image.fromarray(label_picture(*KNOWN["voc21"][:3]), mode="L").convert("P")
        (voc / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        label.save(voc / "SegmentationClass" / f"{sid}.png")
    (voc / "ImageSets/Segmentation").mkdir(parents=True, exist_ok=True)
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    # PASCAL Context (context60, context59: mmsegmentation's; context459: detectron2's TIFFs)
    ctx = root / "VOCdevkit/VOC2010"
    for i, sid in enumerate(ids):
        _image(ctx / "JPEGImages" / f"{sid}.jpg", 10 + i)
        _label(ctx / "SegmentationClassContext" / f"{sid}.png", "context60")
        _label(ctx / "annotations_detectron2/pc459_val" / f"{sid}.tif", "context459")
    (ctx / "ImageSets/SegmentationContext").mkdir(parents=True, exist_ok=True)
    (ctx / "ImageSets/SegmentationContext/val.txt").write_text("\n".join(ids) + "\n")
    # COCO-Stuff 164k and COCO-Object: the raw labels beside the trainId maps are decoys (values to 181)
    coco = root / "coco_stuff164k"
    for i, sid in enumerate(["000000000139", "000000000285"]):
        _image(coco / "images/val2017" / f"{sid}.jpg", 20 + i)
        _label(coco / "annotations/val2017" / f"{sid}_labelTrainIds.png", "coco-stuff")
        _label(coco / "annotations/val2017" / f"{sid}_instanceTrainIds.png", "coco-object")
        Image.fromarray(np.full((H, W), 181, np.uint8)).save(coco / "annotations/val2017" / f"{sid}.png")
    # Cityscapes: city sub-folders; labelIds (0..33) beside the trainIds are decoys
    city = root / "cityscapes"
    for i, (town, sid) in enumerate([("frankfurt", "frankfurt_000000_000294"), ("lindau", "lindau_000000_000019"),
                                     ("munster", "munster_000000_000019")]):
        _image(city / "leftImg8bit/val" / town / f"{sid}_leftImg8bit.png", 30 + i)
        _label(city / "gtFine/val" / town / f"{sid}_gtFine_labelTrainIds.png", "cityscapes")
        Image.fromarray(np.full((H, W), 33, np.uint8)).save(city / "gtFine/val" / town / f"{sid}_gtFine_labelIds.png")
    # ADE20K (mmsegmentation's: labels 0..150, reduce-zero) and ADE-847 (detectron2's uint16 TIFFs)
    ade = root / "ADEChallengeData2016"
    full = root / "ADE20K_2021_17_01"
    for i, sid in enumerate(["ADE_val_00000001", "ADE_val_00000002"]):
        _image(ade / "images/validation" / f"{sid}.jpg", 40 + i)
        _label(ade / "annotations/validation" / f"{sid}.png", "ade20k")
        _image(full / "images_detectron2/validation" / f"{sid}.jpg", 50 + i)
        _label(full / "annotations_detectron2/validation" / f"{sid}.tif", "ade847")
    return root


@pytest.fixture(scope="session")
def benchmark_root(tmp_path_factory) -> Path:
    return make_benchmarks(tmp_path_factory.mktemp("benchmarks"))
