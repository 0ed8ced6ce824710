"""What ``python -m deop eval`` computes: mIoU, per-class IoU and pixel accuracy on a folder dataset, per method.

Dataset: an images folder and a labels folder of PNGs holding class indices, paired by file stem;
255 in a label is "ignore". The classes file has one class per line in index order (line syntax as in
``deop.vocabulary``, so ``person: man, woman`` is one class with synonyms; blank and ``#`` lines are
skipped and do not take an index).

Scoring choices, documented because they change the numbers:
  - Pixels a method leaves unlabelled (-1) count as wrong: they add to their true class's false
    negatives and to no class's false positives (an extra "unlabelled" column of the confusion matrix).
  - A class with no ground-truth pixel and no predicted pixel in the whole dataset has IoU NaN (null in
    JSON) and is left out of mIoU; a class predicted but never present has IoU 0 and counts.
  - Metrics come from one confusion matrix summed over the dataset (np.bincount), so memory is O(C^2)
    whatever the number of images, and mIoU is the dataset-level (not per-image averaged) one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import DatasetError
from .vocabulary import Vocabulary, parse_vocabulary

IGNORE_INDEX = 255
UNLABELLED_POLICY = ("unlabelled (-1) predictions count as wrong: false negatives of the true class, "
                     "false positives of none; classes absent from both ground truth and predictions are NaN and "
                     "skipped in mIoU")


class ConfusionMatrix:
    """Counts[true class, predicted class], with a last column for unlabelled (-1) predictions."""

    def __init__(self, n_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.n = n_classes
        self.ignore_index = ignore_index
        self.counts = np.zeros((n_classes, n_classes + 1), dtype=np.int64)

    def update(self, truth: np.ndarray, prediction: np.ndarray) -> None:
        if truth.shape != prediction.shape:
            raise DatasetError(f"label {truth.shape} and prediction {prediction.shape} differ in size")
        keep = truth != self.ignore_index
        t = truth[keep].astype(np.int64)
        p = prediction[keep].astype(np.int64)
        if t.size and (t.min() < 0 or t.max() >= self.n):
            raise DatasetError(f"label values must be 0..{self.n - 1} or {self.ignore_index}, found "
                               f"{t.min()}..{t.max()}")
        if p.size and (p.min() < -1 or p.max() >= self.n):
            raise ValueError(f"predictions must be -1..{self.n - 1}")
        p = np.where(p < 0, self.n, p)
        self.counts += np.bincount(t * (self.n + 1) + p, minlength=self.n * (self.n + 1)).reshape(self.counts.shape)

    def iou(self) -> np.ndarray:
        """Per-class IoU = TP / (GT + predicted - TP); NaN where a class has neither."""
        tp = np.diag(self.counts[:, : self.n]).astype(np.float64)
        truth = self.counts.sum(axis=1)
        predicted = self.counts[:, : self.n].sum(axis=0)
        union = truth + predicted - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan

    def pixel_accuracy(self) -> float:
        total = self.counts.sum()
        return float(np.trace(self.counts[:, : self.n]) / total) if total else math.nan


@dataclass
class MethodScores:
    method: str
    miou: float
    pixel_accuracy: float
    per_class_iou: dict[str, float | None]
    pixels: int
    unlabelled_pixels: int

    @classmethod
    def from_matrix(cls, method: str, matrix: ConfusionMatrix, names: Sequence[str]) -> MethodScores:
        iou = matrix.iou()
        per_class = {n: (None if math.isnan(v) else float(v)) for n, v in zip(names, iou)}
        return cls(method, matrix.miou(), matrix.pixel_accuracy(), per_class, int(matrix.counts.sum()),
                   int(matrix.counts[:, -1].sum()))


@dataclass
class Pair:
    image: Path
    label: Path


def read_classes(path: str | Path) -> Vocabulary:
    """One class per line, in index order; a line may add synonyms (``name: syn, syn``)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read the classes file {path}: {exc}") from None
    specs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        vocab = parse_vocabulary(line)
        if len(vocab) != 1:
            raise DatasetError(f"{path}:{number}: one class per line (use 'name: synonym, synonym'), got {vocab.names}")
        specs.append(vocab.classes[0])
    if not specs:
        raise DatasetError(f"{path}: no classes")
    return Vocabulary(tuple(specs))


def find_pairs(images: str | Path, labels: str | Path) -> tuple[list[Pair], list[str]]:
    """Images that have a label PNG of the same stem, and a warning for each image without one."""
    from .images import collect_images

    files, errors = collect_images([str(images)])
    if errors:
        raise DatasetError("; ".join(errors))
    label_dir = Path(labels)
    if not label_dir.is_dir():
        raise DatasetError(f"{label_dir}: no such labels folder")
    pairs, warnings = [], []
    for f in files:
        label = label_dir / f"{f.stem}.png"
        if label.exists():
            pairs.append(Pair(f, label))
        else:
            warnings.append(f"{f.name}: no label {label.name}, skipped")
    if not pairs:
        raise DatasetError(f"no image in {images} has a label PNG of the same name in {labels}")
    return pairs, warnings


def load_label(path: str | Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise DatasetError(f"{path}: a label PNG holds one class index per pixel (mode L or P), not "
                                   f"{img.mode}")
            return np.array(img).astype(np.int64)
    except (OSError, SyntaxError) as exc:  # PIL's errors for unreadable, truncated or non-image files
        raise DatasetError(f"cannot read the label {path}: {exc}") from None


Predictor = Callable[[Pair], dict[str, np.ndarray]]


def evaluate(pairs: Sequence[Pair], names: Sequence[str], methods: Sequence[str], predict: Predictor,
             progress: Callable[[Sequence[Pair]], Any] = iter) -> dict[str, MethodScores]:
    """Scores per method; `predict` maps a pair to {method: label map at the label's size (-1 = none)}."""
    matrices = {m: ConfusionMatrix(len(names)) for m in methods}
    for pair in progress(pairs):
        truth = load_label(pair.label)
        predictions = predict(pair)
        for m in methods:
            try:
                matrices[m].update(truth, predictions[m])
            except DatasetError as exc:
                raise DatasetError(f"{pair.label}: {exc}") from None
    return {m: MethodScores.from_matrix(m, matrices[m], names) for m in methods}


def segmenter_predictor(segmenter: Any, vocabulary: Vocabulary, method: str) -> Predictor:
    from .images import load_image

    def predict(pair: Pair) -> dict[str, np.ndarray]:
        result = segmenter.segment(load_image(pair.image), vocabulary, method=method)
        return {name: r.label_map for name, r in result.methods.items()}

    return predict


def report(scores: dict[str, MethodScores], pairs: Sequence[Pair], settings: dict[str, Any],
           warnings: Sequence[str]) -> dict[str, Any]:
    def num(v: float) -> float | None:
        return None if math.isnan(v) else round(v, 6)

    return {
        "images": len(pairs), "policy": UNLABELLED_POLICY, "settings": settings, "warnings": list(warnings),
        "methods": {m: {"miou": num(s.miou), "pixel_accuracy": num(s.pixel_accuracy), "pixels": s.pixels,
                        "unlabelled_pixels": s.unlabelled_pixels,
                        "per_class_iou": {k: None if v is None else round(v, 6) for k, v in s.per_class_iou.items()}}
                    for m, s in scores.items()},
    }


def markdown(rep: dict[str, Any]) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}"

    methods = list(rep["methods"])
    lines = [f"# Evaluation ({rep['images']} images)", "", "| method | mIoU | pixel acc. | unlabelled px |",
             "|---|---|---|---|"]
    for m, s in rep["methods"].items():
        lines.append(f"| {m} | {pct(s['miou'])} | {pct(s['pixel_accuracy'])} | {s['unlabelled_pixels']} |")
    lines += ["", "| class | " + " | ".join(f"{m} IoU" for m in methods) + " |",
              "|---|" + "---|" * len(methods)]
    for name in rep["methods"][methods[0]]["per_class_iou"]:
        cells = [pct(rep["methods"][m]["per_class_iou"][name]) for m in methods]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"IoU in %. {rep['policy'][0].upper()}{rep['policy'][1:]}.", ""]
    return "\n".join(lines)
