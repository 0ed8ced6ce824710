"""Every file a result is saved as (overlay and label PNGs, per-class mask ZIP, results JSON), with one
filename rule, shared by the CLI and the app so both give the same downloads."""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from . import render
from .errors import OutputError
from .models import RANDOM_WEIGHTS_WARNING
from .result import SegmentationResult

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
# zlib level of the label PNGs and masks: label maps are long runs, which level 1 compresses to about the
# size level 6 gives, several times faster at 48 megapixels
PNG_LEVEL = 1


def safe_name(name: str, fallback: str = "class", limit: int = 60) -> str:
    """The one rule for a file-name part made from a user's text (a class name, an input file's stem): no
    separators, no dots at all, so it cannot leave its folder or archive; never empty."""
    return _UNSAFE.sub("_", str(name))[:limit] or fallback


def stem_of(name: str) -> str:
    """An output stem from an input file name (``holiday.jpg`` → ``holiday``)."""
    return safe_name(Path(str(name)).stem, fallback="image", limit=100)


def label_image(label_map: np.ndarray, class_names: list[str]) -> Image.Image:
    """A PNG-ready label image whose pixel value is the class index.

    Up to 255 classes: mode "P", 255 = unlabelled (black), palette = ``palette(len(class_names))``, so it
    opens as a colour picture and still reads back as indices. More classes cannot fit a byte, so the image
    is 16-bit grey ("I;16", 65535 = unlabelled) and the JSON is what names the labels. The mode depends on
    the vocabulary size, not on which classes happen to appear, so one vocabulary always gives one format.
    """
    n = len(class_names)
    if n > 65535:
        raise ValueError(f"{n} classes do not fit a 16-bit label image")
    label_map = render.check_labels(label_map, n)
    if n > 255:
        return Image.fromarray(np.where(label_map < 0, 65535, label_map).astype(np.uint16))
    img = Image.fromarray(np.where(label_map < 0, 255, label_map).astype(np.uint8))
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:n] = render.palette(n)
    img.putpalette(lut.ravel().tolist())
    return img


def masks_zip(label_map: np.ndarray, class_names: list[str]) -> bytes:
    """One 0/255 PNG per class present plus classes.json: for tools that want binary masks, not indices."""
    label_map = render.check_labels(label_map, len(class_names))
    counts = np.bincount((label_map + 1).ravel(), minlength=len(class_names) + 1)[1:]  # -1 counted apart
    listing = []
    buf = io.BytesIO()
    # The PNGs are stored, not deflated again: they are compressed already, and a second pass over a
    # 48-megapixel mask per class was most of this function's time. PNG level 1: masks are runs, which the
    # fastest level compresses nearly as well.
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i, name in enumerate(class_names):
            file = f"{i}_{safe_name(name)}.png" if counts[i] else None
            if file:
                png = io.BytesIO()
                Image.fromarray(label_map == i).convert("L").save(
                    png, format="PNG", compress_level=PNG_LEVEL)
                zf.writestr(file, png.getvalue(), compress_type=zipfile.ZIP_STORED)
            listing.append({"index": i, "name": name, "pixels": int(counts[i]), "file": file})
        meta = {"height": int(label_map.shape[0]), "width": int(label_map.shape[1]),
                "unlabelled_pixels": int((label_map < 0).sum()), "classes": listing}
        zf.writestr("classes.json", json.dumps(meta, indent=2, ensure_ascii=False))
    return buf.getvalue()


def overlay_image(image: np.ndarray, result: SegmentationResult, method: str) -> np.ndarray:
    banner = RANDOM_WEIGHTS_WARNING if result.random_weights else None
    return render.overlay(image, result.methods[method].label_map_at(image.shape), result.classes, banner=banner)


def write_json(result: SegmentationResult, path: Path) -> Path:
    """Written whole or not at all (a temporary file renamed into place): an image's JSON, written after its
    pictures, is what says its outputs are complete (``outputs_complete``, for ``segment --resume``)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _method_suffix(name: str, primary: str) -> str:
    return "" if name == primary else "_" + safe_name(name, "method")


def output_files(out_dir: Path, stem: str, methods: list[str]) -> dict[str, Path]:
    """The files ``save_result`` writes for a result of `methods` (the first is the primary), by the keys it
    returns them under (the optional masks ZIP aside); the JSON comes last."""
    stem = safe_name(stem, "image", 100)
    files: dict[str, Path] = {}
    for name in methods:
        suffix = _method_suffix(name, methods[0])
        files[f"overlay{suffix}"] = out_dir / f"{stem}_overlay{suffix}.png"
        files[f"labels{suffix}"] = out_dir / f"{stem}_labels{suffix}.png"
    files["json"] = out_dir / f"{stem}.json"
    return files


def outputs_complete(out_dir: Path, stem: str, methods: list[str]) -> bool:
    """Whether every output of an image is there, its JSON (written last, whole) included."""
    return all(f.is_file() for f in output_files(Path(out_dir), stem, methods).values())


def save_result(image: np.ndarray, result: SegmentationResult, out_dir: Path, stem: str,
                masks: bool = False) -> dict[str, Path]:
    """Writes <stem>_overlay.png, <stem>_labels.png and <stem>.json (the primary method: one-pass when it
    ran), plus <stem>_overlay_<method>.png and <stem>_labels_<method>.png for every other method; with
    `masks`, also <stem>_masks.zip (``masks_zip`` of the primary method, from the same full-size map)."""
    try:
        return _save_result(image, result, Path(out_dir), stem, masks)
    except OSError as exc:
        raise OutputError(f"cannot write the results into {out_dir}: {exc.strerror or exc}") from exc


def _save_result(image: np.ndarray, result: SegmentationResult, out_dir: Path, stem: str,
                 masks: bool) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = output_files(out_dir, stem, list(result.methods))
    primary = result.primary
    written: dict[str, Path] = {}
    primary_labels = None
    for name in result.methods:
        suffix = _method_suffix(name, primary)
        overlay_path, labels_path = files[f"overlay{suffix}"], files[f"labels{suffix}"]
        Image.fromarray(overlay_image(image, result, name)).save(overlay_path)
        labels = result.methods[name].label_map  # at the input size: made once per method
        primary_labels = labels if name == primary else primary_labels
        label_image(labels, result.classes).save(labels_path, compress_level=PNG_LEVEL)
        written[f"overlay{suffix}"] = overlay_path
        written[f"labels{suffix}"] = labels_path
    written["json"] = write_json(result, files["json"])
    if masks and primary_labels is not None:
        written["masks"] = files["json"].with_name(files["json"].stem + "_masks.zip")
        written["masks"].write_bytes(masks_zip(primary_labels, result.classes))
    return written
