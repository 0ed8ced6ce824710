"""Files a result is saved as, shared by the CLI and the app so both give the same downloads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from . import render
from .models import RANDOM_WEIGHTS_WARNING
from .result import SegmentationResult

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_stem(name: str, fallback: str = "image") -> str:
    """A file stem from an input name that cannot leave the output folder (no separators, no dot-dot)."""
    stem = _UNSAFE.sub("_", Path(str(name)).stem).strip("._")[:100]
    return stem or fallback


def primary_method(result: SegmentationResult) -> str:
    return "one-pass" if "one-pass" in result.methods else next(iter(result.methods))


def overlay_image(image: np.ndarray, result: SegmentationResult, method: str) -> np.ndarray:
    banner = RANDOM_WEIGHTS_WARNING if result.random_weights else None
    return render.overlay(image, result.methods[method].label_map, result.classes, banner=banner)


def write_json(result: SegmentationResult, path: Path) -> Path:
    path.write_text(json.dumps(result.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def save_result(image: np.ndarray, result: SegmentationResult, out_dir: Path, stem: str) -> dict[str, Path]:
    """Writes <stem>_overlay.png, <stem>_labels.png and <stem>.json (the primary method: one-pass when it
    ran), plus <stem>_overlay_<method>.png and <stem>_labels_<method>.png for every other method."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = safe_stem(stem)
    primary = primary_method(result)
    written: dict[str, Path] = {}
    for name in result.methods:
        suffix = "" if name == primary else "_" + safe_stem(name)
        overlay_path = out_dir / f"{stem}_overlay{suffix}.png"
        Image.fromarray(overlay_image(image, result, name)).save(overlay_path)
        labels_path = out_dir / f"{stem}_labels{suffix}.png"
        render.label_image(result.methods[name].label_map, result.classes).save(labels_path)
        written[f"overlay{suffix}"] = overlay_path
        written[f"labels{suffix}"] = labels_path
    written["json"] = write_json(result, out_dir / f"{stem}.json")
    return written
