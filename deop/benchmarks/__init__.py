"""The standard open-vocabulary segmentation benchmarks as data: where each split lives under a data root,
how its label values map to class indices, its class names, and the training-free papers' protocol.

One ``Benchmark`` per entry of ``BENCHMARKS``; nothing below branches on a benchmark's name. A benchmark may
be found in more than one layout (mmsegmentation's, detectron2's): the first whose folders exist is read.

Label decoding (``decode_label``) gives int64 class indices with ``IGNORE`` (-1) for pixels that are not
scored: the layout's ignore values (255, or 65535 in detectron2's 16-bit TIFFs), and with
``reduce_zero`` the value 0 (mmsegmentation's reduce_zero_label: 0 = "other" or background is ignored, every
other value is shifted down by one). A value that is neither ignored nor a class index is an error naming
the file and the values.

Class files (``classes/<name>.txt``): one class a line, in label order; a line's names (the class, then its
synonyms) are separated by ";", so commas stay inside names (ADE-847's "building, edifice" is one name);
lines starting with "#" are comments. The training-free protocol prompts each name on its own and takes the
best synonym's probability (``deop.protocol``); the pipeline's methods average a class's names.

Nothing here imports torch.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from ..errors import DatasetError, OptionError
from ..vocabulary import ClassSpec, Vocabulary

IGNORE = -1
CLASS_DIR = Path(__file__).resolve().parent / "classes"


@dataclass(frozen=True)
class Layout:
    """Where a validation split lives under the data root, and how its labels read.

    roots: candidate folders under the data root (the first that exists is used); images, labels and split
    are relative to it. split: a list of ids, one a line (``<id><suffix>`` is the file); without one, every
    label file in `labels` (and its sub-folders with `recursive`) is paired with the image of the same
    relative name. prepare: the script or download that produces this layout, named in errors."""

    name: str
    roots: tuple[str, ...]
    images: str
    labels: str
    image_suffix: str
    label_suffix: str
    prepare: str
    split: str | None = None
    recursive: bool = False
    reduce_zero: bool = False
    ignore: tuple[int, ...] = (255,)


@dataclass(frozen=True)
class Protocol:
    """The training-free papers' inference settings for one benchmark (``deop.protocol`` runs them).

    short_side / long_side: mmsegmentation's Resize(scale=(long_side, short_side), keep_ratio=True): the
    image is scaled (up or down) by min(long_side / long, short_side / short). window / stride: the sliding
    window's side and step in pixels (window 0: the whole resized image at once). logit_scale: the softmax
    temperature over the prompts. threshold: pixels whose best class probability is below it become class 0
    (the background). area_threshold: SCLIP's rule for VOC21: a non-background class predicted on no more
    than this fraction of the non-background pixels is suppressed. partial_patch: a window whose side is not
    a multiple of the patch size is cut to whole patches ("floor", as SCLIP's and NACLIP's ViT does) or
    zero-padded ("pad", as ClearCLIP and ProxyCLIP do). class_file: the repository's own class file where it
    differs from the benchmark's. source: the files these values come from."""

    short_side: int
    window: int
    stride: int
    logit_scale: float
    source: str
    threshold: float = 0.0
    area_threshold: float | None = None
    partial_patch: str = "floor"
    long_side: int = 2048
    class_file: str | None = None


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    n_classes: int
    layouts: tuple[Layout, ...]
    expected_images: int
    # protocols: "default" for every variant, and the published repository's own settings for its variant
    protocols: Mapping[str, Protocol]
    background: int | None = None  # the class that stands for "none of the others" (VOC21, Context60, COCO-Object)
    class_file: str = ""
    aliases: tuple[str, ...] = field(default=())

    def protocol(self, variant: str) -> Protocol:
        return self.protocols.get(variant, self.protocols["default"])

    def vocabulary(self, variant: str | None = None) -> Vocabulary:
        """The class names with their synonyms (the variant's repository's own file where it has one)."""
        file = (self.protocol(variant).class_file if variant else None) or self.class_file or f"{self.name}.txt"
        vocab = read_class_file(CLASS_DIR / file, self.background)
        if len(vocab) != self.n_classes:
            raise DatasetError(f"{file}: {len(vocab)} classes, {self.name} has {self.n_classes}")
        return vocab


# -- the protocols, value by value from the official configs -------------------------------------------------
# SCLIP (wangf3014/SCLIP): clip_segmentor.py defaults logit_scale=40, slide_crop=224, slide_stride=112,
# prob_thd=0; configs/cfg_<benchmark>.py set the Resize short side and any other value.
def _sclip(config: str, short: int = 336, logit: float = 40.0, threshold: float = 0.0,
           area: float | None = None) -> Protocol:
    return Protocol(short, 224, 112, logit, f"wangf3014/SCLIP configs/{config}, clip_segmentor.py", threshold, area)


# ClearCLIP (mc-lan/ClearCLIP): clearclip_segmentor.py defaults logit_scale=50, slide_crop=448,
# slide_stride=224, prob_thd=0; windows are zero-padded to whole patches (forward_slide's compute_padsize).
def _clearclip(config: str, window: int = 448, stride: int = 224, threshold: float = 0.0,
               class_file: str | None = None) -> Protocol:
    return Protocol(448, window, stride, 50.0, f"mc-lan/ClearCLIP configs/{config}, clearclip_segmentor.py",
                    threshold, partial_patch="pad", class_file=class_file)


# NACLIP (sinahmr/NACLIP): naclip.py defaults logit_scale=40, slide_crop=224, slide_stride=112, prob_thd=0,
# PAMR off (its published table without post-processing); configs/cfg_<benchmark>.py set the rest.
def _naclip(config: str, short: int = 336, window: int = 224, threshold: float = 0.0) -> Protocol:
    return Protocol(short, window, 112, 40.0, f"sinahmr/NACLIP configs/{config}, naclip.py", threshold)


# ProxyCLIP (mc-lan/ProxyCLIP), the training-free repository that runs ADE-847 and Context-459 in this
# protocol: proxyclip_segmentor.py defaults logit_scale=40, slide_crop=336, slide_stride=112, prob_thd=0;
# configs/cfg_ade847.py and cfg_context459.py: Resize short side 448. (Its CLIP features are re-weighted by a
# vision foundation model; only the protocol is taken from it.)
def _proxyclip(config: str) -> Protocol:
    return Protocol(448, 336, 112, 40.0, f"mc-lan/ProxyCLIP configs/{config}, proxyclip_segmentor.py",
                    partial_patch="pad")


def _protocols(sclip: Protocol, clearclip: Protocol, naclip: Protocol) -> Mapping[str, Protocol]:
    """NACLIP's settings are the default: its paper re-ran the other methods under them."""
    return MappingProxyType({"default": naclip, "naclip": naclip, "naclip-noprior": naclip, "sclip": sclip,
                             "clearclip": clearclip})


# -- the layouts -----------------------------------------------------------------------------------------------
_VOC_PREPARE = ("the PASCAL VOC 2012 download (VOCtrainval_11-May-2012.tar), as mmsegmentation's dataset guide "
                "lays it out under VOCdevkit/")
_CONTEXT_PREPARE = ("mmsegmentation's tools/dataset_converters/pascal_context.py on VOC2010 with "
                    "trainval_merged.json (it writes SegmentationClassContext and ImageSets/SegmentationContext)")


def _voc(reduce_zero: bool) -> tuple[Layout, ...]:
    return (Layout("mmsegmentation", ("VOCdevkit/VOC2012",), "JPEGImages", "SegmentationClass", ".jpg", ".png",
                   _VOC_PREPARE, split="ImageSets/Segmentation/val.txt", reduce_zero=reduce_zero),)


def _context(reduce_zero: bool) -> tuple[Layout, ...]:
    return (Layout("mmsegmentation", ("VOCdevkit/VOC2010",), "JPEGImages", "SegmentationClassContext", ".jpg",
                   ".png", _CONTEXT_PREPARE, split="ImageSets/SegmentationContext/val.txt",
                   reduce_zero=reduce_zero),)


_COCO_ROOTS = ("coco_stuff164k", "coco_stuff")

BENCHMARKS: Mapping[str, Benchmark] = MappingProxyType({b.name: b for b in (
    Benchmark(
        "voc21", "VOC21", 21, _voc(False), 1449, background=0,
        protocols=_protocols(_sclip("cfg_voc21.py", logit=65.0, threshold=0.1, area=0.1),
                             _clearclip("cfg_voc21.py", threshold=0.5, class_file="voc21.clearclip.txt"),
                             _naclip("cfg_voc21.py", window=0, threshold=0.1))),
    Benchmark(
        "context60", "Context60", 60, _context(False), 5105, background=0,
        protocols=_protocols(_sclip("cfg_context60.py", logit=50.0, threshold=0.1),
                             _clearclip("cfg_context60.py", threshold=0.15),
                             _naclip("cfg_context60.py", threshold=0.1))),
    Benchmark(
        "coco-object", "COCO-Object", 81, (
            Layout("training-free", _COCO_ROOTS, "images/val2017", "annotations/val2017", ".jpg",
                   "_instanceTrainIds.png", "datasets/cvt_coco_object.py of SCLIP, ClearCLIP or NACLIP (from "
                   "GroupViT) run on coco_stuff164k: things 1..80, everything else 0 (background)"),),
        5000, background=0,
        protocols=_protocols(_sclip("cfg_coco_object.py", logit=50.0, threshold=0.1),
                             _clearclip("cfg_coco_object.py", threshold=0.4,
                                        class_file="coco-object.clearclip.txt"),
                             _naclip("cfg_coco_object.py", threshold=0.1))),
    Benchmark(
        "voc20", "VOC20", 20, _voc(True), 1449,
        protocols=_protocols(_sclip("cfg_voc20.py"),
                             _clearclip("cfg_voc20.py", class_file="voc20.clearclip.txt"),
                             _naclip("cfg_voc20.py", window=0))),
    Benchmark(
        "context59", "Context59", 59, _context(True), 5105,
        protocols=_protocols(_sclip("cfg_context59.py"), _clearclip("cfg_context59.py"),
                             _naclip("cfg_context59.py"))),
    Benchmark(
        "coco-stuff", "COCO-Stuff", 171, (
            Layout("mmsegmentation", _COCO_ROOTS, "images/val2017", "annotations/val2017", ".jpg",
                   "_labelTrainIds.png", "mmsegmentation's tools/dataset_converters/coco_stuff164k.py on "
                   "stuffthingmaps_trainval2017.zip"),),
        5000,
        protocols=_protocols(_sclip("cfg_coco_stuff164k.py", short=448), _clearclip("cfg_coco_stuff164k.py"),
                             _naclip("cfg_coco_stuff164k.py"))),
    Benchmark(
        "cityscapes", "Cityscapes", 19, (
            Layout("mmsegmentation", ("cityscapes",), "leftImg8bit/val", "gtFine/val", "_leftImg8bit.png",
                   "_gtFine_labelTrainIds.png", "mmsegmentation's tools/dataset_converters/cityscapes.py "
                   "(cityscapesscripts' trainId maps)", recursive=True),),
        500,
        protocols=_protocols(_sclip("cfg_city_scapes.py", short=560),
                             _clearclip("cfg_city_scapes.py", window=224, stride=224),
                             _naclip("cfg_city_scapes.py", short=560))),
    Benchmark(
        "ade20k", "ADE20K", 150, (
            Layout("mmsegmentation", ("ADEChallengeData2016", "ade/ADEChallengeData2016"), "images/validation",
                   "annotations/validation", ".jpg", ".png", "the ADEChallengeData2016.zip download as it is",
                   reduce_zero=True),
            Layout("detectron2", ("ADEChallengeData2016",), "images/validation", "annotations_detectron2/validation",
                   ".jpg", ".png", "MaskFormer's datasets/prepare_ade20k_sem_seg.py (labels already shifted)")),
        2000,
        protocols=_protocols(_sclip("cfg_ade20k.py"), _clearclip("cfg_ade20k.py"), _naclip("cfg_ade20k.py"))),
    Benchmark(
        "ade847", "ADE-847", 847, (
            Layout("detectron2", ("ADE20K_2021_17_01",), "images_detectron2/validation",
                   "annotations_detectron2/validation", ".jpg", ".tif", "MaskFormer's "
                   "datasets/prepare_ade20k_full_sem_seg.py on ADE20K_2021_17_01 (uint16 TIFF labels)",
                   ignore=(65535,)),),
        2000,
        protocols=MappingProxyType({"default": _proxyclip("cfg_ade847.py")})),
    Benchmark(
        "context459", "Context459", 459, (
            Layout("detectron2", ("VOCdevkit/VOC2010",), "JPEGImages", "annotations_detectron2/pc459_val", ".jpg",
                   ".tif", "CAT-Seg's datasets/prepare_pascal_context_459.py (uint16 TIFF labels from "
                   "trainval/*.mat)", ignore=(65535,)),),
        5105,
        protocols=MappingProxyType({"default": _proxyclip("cfg_context459.py")})),
)})

# The eight benchmarks the training-free papers average, in their tables' order.
PAPER_EIGHT = ("voc21", "context60", "coco-object", "voc20", "context59", "coco-stuff", "cityscapes", "ade20k")


def get_benchmarks(names: str | Sequence[str]) -> list[Benchmark]:
    """Benchmarks by name ("voc21,ade20k" or a list; "all" for every one, "paper" for the papers' eight)."""
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    out: list[Benchmark] = []
    for item in items:
        chosen = {"all": list(BENCHMARKS), "paper": list(PAPER_EIGHT)}.get(item, [item])
        for name in chosen:
            if name not in BENCHMARKS:
                raise OptionError(f"unknown benchmark {name!r}; the benchmarks are {', '.join(BENCHMARKS)} "
                                  "(or 'paper' for the eight the papers average, 'all' for every one)")
            if BENCHMARKS[name] not in out:
                out.append(BENCHMARKS[name])
    if not out:
        raise OptionError(f"no benchmark given; the benchmarks are {', '.join(BENCHMARKS)}")
    return out


@functools.lru_cache(maxsize=32)
def read_class_file(path: str | Path, background: int | None = None) -> Vocabulary:
    """A benchmark class file (this module's format), every line a class in order, nothing merged: a name
    may appear in two classes (COCO-Object's stuff words include "bed"), as the published files have it. The
    `background` class is named "background" whatever its prompts."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read the class file {path}: {exc}") from None
    specs = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        prompts = tuple(" ".join(p.split()) for p in line.split(";") if p.strip())
        name = "background" if background is not None and len(specs) == background else prompts[0]
        specs.append(ClassSpec(name, prompts))
    if not specs:
        raise DatasetError(f"{path}: no classes")
    return Vocabulary(tuple(specs))


@dataclass(frozen=True)
class Sample:
    """One image of a split: `name` is its id (relative path without suffix); `error` says why it cannot be
    scored (a missing image or label), found while listing."""

    benchmark: str
    name: str
    image: str
    label: str
    error: str = ""


def _layout_paths(layout: Layout, root: Path) -> list[Path]:
    paths = [root / layout.images, root / layout.labels]
    return paths + ([root / layout.split] if layout.split else [])


def find_layout(benchmark: Benchmark, data_root: str | Path) -> tuple[Layout, Path]:
    """The first of the benchmark's layouts whose folders (and split list) exist under `data_root`."""
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise DatasetError(f"{benchmark.name}: the data root {data_root} is not a folder")
    for layout in benchmark.layouts:
        for name in layout.roots:
            root = data_root / name
            if all(p.exists() for p in _layout_paths(layout, root)):
                return layout, root
    expected = "; or ".join(
        " and ".join(str(p) for p in _layout_paths(layout, data_root / layout.roots[0]))
        + f" ({layout.name} layout, made by {layout.prepare})" for layout in benchmark.layouts)
    raise DatasetError(f"{benchmark.name}: no {benchmark.title} split under {data_root}: expected {expected}")


def manifest(benchmark: Benchmark, data_root: str | Path, limit: int | None = None
             ) -> tuple[Layout, Path, list[Sample]]:
    """The split's (image, label) pairs in a stable order, the first `limit` of them; an image without a label,
    a label without an image, or a split entry naming a missing image is listed with its `error`."""
    layout, root = find_layout(benchmark, data_root)
    images_dir, labels_dir = root / layout.images, root / layout.labels
    samples: list[Sample] = []
    if layout.split:
        split = root / layout.split
        try:
            ids = [line.strip() for line in split.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{benchmark.name}: cannot read the split list {split}: {exc}") from None
        for sample_id in ids[:limit] if limit else ids:
            image = images_dir / f"{sample_id}{layout.image_suffix}"
            label = labels_dir / f"{sample_id}{layout.label_suffix}"
            error = ""
            if not image.is_file():
                error = f"the split list {split} names {sample_id}, whose image {image} is missing"
            elif not label.is_file():
                error = f"no label {label} for the image {image}"
            samples.append(Sample(benchmark.name, sample_id, str(image), str(label), error))
        return layout, root, samples
    images = _by_key(images_dir, layout.image_suffix, layout.recursive)
    labels = _by_key(labels_dir, layout.label_suffix, layout.recursive)
    keys = sorted(set(images) | set(labels))
    for key in keys[:limit] if limit else keys:
        image = images.get(key, images_dir / f"{key}{layout.image_suffix}")
        label = labels.get(key, labels_dir / f"{key}{layout.label_suffix}")
        error = ""
        if key not in labels:
            error = f"no label {label} for the image {image}"
        elif key not in images:
            error = f"the label {label} has no image {image}"
        samples.append(Sample(benchmark.name, key, str(image), str(label), error))
    return layout, root, samples


def _by_key(folder: Path, suffix: str, recursive: bool) -> dict[str, Path]:
    files = folder.rglob(f"*{suffix}") if recursive else folder.glob(f"*{suffix}")
    return {p.relative_to(folder).as_posix()[: -len(suffix)]: p for p in files if p.is_file()}


def decode_label(path: str | Path, layout: Layout, n_classes: int) -> np.ndarray:
    """The label file as int64 class indices, ``IGNORE`` where the layout says a pixel is not scored."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise DatasetError(f"{path}: a label holds one class index per pixel (a grey, palette or 16-bit "
                                   f"image), not {img.mode}")
            raw = np.array(img).astype(np.int64)
    except DatasetError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for unreadable, truncated or non-image files
        raise DatasetError(f"cannot read the label {path}: {exc}") from None
    ignored = np.isin(raw, layout.ignore)
    values = raw
    if layout.reduce_zero:
        ignored |= raw == 0
        values = raw - 1
    bad = ~ignored & ((values < 0) | (values >= n_classes))
    if bad.any():
        found = np.unique(raw[bad])
        shown = ", ".join(str(v) for v in found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
        rule = f"0..{n_classes}, 0 ignored" if layout.reduce_zero else f"0..{n_classes - 1}"
        ignore = " or ".join(str(v) for v in layout.ignore)
        raise DatasetError(f"{path}: label values {shown} are outside this benchmark's range ({rule}; "
                           f"{ignore} = ignore)")
    return np.where(ignored, IGNORE, values)
