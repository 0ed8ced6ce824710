"""What ``python -m deop eval`` computes: mIoU, per-class IoU and pixel accuracy, per method or variant, on a
folder dataset or on the standard benchmarks (``deop.benchmarks``).

Folder dataset: an images folder and a labels folder of PNGs holding class indices, paired by file stem;
255 in a label is "ignore". The classes file has one class per line in index order (line syntax as in
``deop.vocabulary``, so ``person: man, woman`` is one class with synonyms; blank and ``#`` lines are
skipped and do not take an index).

Scoring choices, documented because they change the numbers:
  - Pixels a method leaves unlabelled (-1) count as wrong: they add to their true class's false
    negatives and to no class's false positives (an extra "unlabelled" column of the confusion matrix).
    On a benchmark with a background class (VOC21, Context60, COCO-Object) they are the background
    instead, as the published protocol's threshold makes them.
  - A class with no ground-truth pixel and no predicted pixel in the whole dataset has IoU NaN (null in
    JSON) and is left out of mIoU; a class predicted but never present has IoU 0 and counts.
  - Metrics come from one confusion matrix summed over the dataset (np.bincount), so memory is O(C^2)
    whatever the number of images, and mIoU is the dataset-level (not per-image averaged) one.
  - An image that cannot be scored (unreadable, truncated, no label, label values out of range) is
    reported by name and left out; the others are still counted.

The work is split so that any engine can run it (``deop.engine``: this process, or Ray actors): a
``Sample`` is decoded (``decode``) into an image and its label, a ``Scorer`` (one per process, models
loaded once) turns decoded samples into a ``Partial`` (confusion matrices summed over its images, and the
failures), and partials are summed (``Partial.add``) wherever they meet.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .benchmarks import IGNORE, Benchmark, Layout, Protocol, Sample, decode_label
from .errors import DatasetError, DeopError, OptionError
from .vocabulary import Vocabulary, parse_vocabulary

IGNORE_INDEX = 255
UNLABELLED_POLICY = ("unlabelled (-1) predictions count as wrong: false negatives of the true class, "
                     "false positives of none (the background class's pixels on a benchmark that has one); "
                     "classes absent from both ground truth and predictions are NaN and skipped in mIoU")


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


def folder_samples(images: str | Path, labels: str | Path) -> list[Sample]:
    """The folder dataset's images paired with the label PNG of the same stem; an image without a label and
    a label without an image are listed with their error (reported by name, not scored)."""
    from .images import collect_images

    files, errors = collect_images([str(images)])
    if errors:
        raise DatasetError("; ".join(errors))
    label_dir = Path(labels)
    if not label_dir.is_dir():
        raise DatasetError(f"{label_dir}: no such labels folder")
    stems = {f.stem for f in files}
    samples = []
    for f in files:
        label = label_dir / f"{f.stem}.png"
        error = "" if label.is_file() else f"no label {label} for the image {f}"
        samples.append(Sample("folder", f.stem, str(f), str(label), error))
    for label in sorted(label_dir.glob("*.png")):
        if label.stem not in stems:
            samples.append(Sample("folder", label.stem, str(Path(images) / label.name), str(label),
                                  f"the label {label} has no image in {images}"))
    if not any(not s.error for s in samples):
        raise DatasetError(f"no image in {images} has a label PNG of the same name in {labels}")
    return samples


FOLDER_LAYOUT = Layout("folder", ("",), "", "", "", ".png", "an images folder and a labels folder of PNGs")


# -- what a run scores ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One row of the results table: a method with a severance variant; `protocol` is the training-free
    papers' protocol (``deop.protocol``, dense only) instead of the pipeline."""

    name: str
    method: str
    variant: str
    protocol: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    """What a worker needs to decode and score one dataset's images (picklable, no torch)."""

    key: str
    title: str
    vocabulary: Vocabulary
    layout: Layout
    background: int | None = None
    protocols: Mapping[str, Protocol] = field(default_factory=dict)
    # a variant's own class file where its repository's differs (same classes, other prompts)
    variant_vocabularies: Mapping[str, Vocabulary] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.vocabulary)

    @property
    def names(self) -> list[str]:
        return self.vocabulary.names

    def protocol(self, variant: str) -> Protocol:
        if not self.protocols:
            raise OptionError("the training-free protocol needs a benchmark (--benchmark); a folder dataset "
                              "has no published settings")
        return self.protocols.get(variant, self.protocols["default"])

    @classmethod
    def of(cls, benchmark: Benchmark, layout: Layout, variants: Sequence[str] = ()) -> DatasetSpec:
        default = benchmark.vocabulary()
        own = {v: benchmark.vocabulary(v) for v in variants if benchmark.protocol(v).class_file}
        return cls(benchmark.name, benchmark.title, default, layout, benchmark.background, dict(benchmark.protocols),
                   own)


@dataclass(frozen=True)
class Plan:
    """Everything a scorer needs besides the models: the runs and the datasets by key."""

    runs: tuple[Run, ...]
    datasets: Mapping[str, DatasetSpec]
    protocol_templates: str = "imagenet80"


def plan_runs(method: str, variants: Sequence[str] | None, default_variant: str, protocol: bool = False,
              model: str = "training-free") -> tuple[Run, ...]:
    """The table's rows: each method of `method` (``deop.methods.RUNS``) with each variant. Without
    `variants` a row is named by its method; with them "method/variant" (the crop baseline does not depend
    on the variant: one row). The training-free protocol is for the dense method only."""
    from .clip.severance import SEVERANCE_VARIANTS
    from .methods import methods_of

    names = [m.name for m in methods_of(method, model)]  # an unknown method, or one the model lacks, is named
    if model != "training-free" and variants is not None:
        raise OptionError(f"--variants are the training-free model's severance variants; the {model} model has "
                          "its own mask-guided severance")
    if protocol and method != "dense":
        raise OptionError("--protocol training-free is the papers' dense protocol: use it with --method dense")
    named = variants is not None
    chosen = list(dict.fromkeys(variants)) if variants else [default_variant]
    unknown = [v for v in chosen if v not in SEVERANCE_VARIANTS]
    if unknown:
        raise OptionError(f"unknown variant(s) {', '.join(unknown)}; the variants are {', '.join(SEVERANCE_VARIANTS)}")
    runs: list[Run] = []
    for m in names:
        if m == "crop":
            runs.append(Run("crop", "crop", chosen[0]))
            continue
        runs += [Run(f"{m}/{v}" if named else m, m, v, protocol) for v in chosen]
    return tuple(runs)


def parse_variants(text: str | None) -> list[str] | None:
    """--variants' comma-separated names (``plan_runs`` checks them), or None when not given."""
    if text is None:
        return None
    items = [v.strip() for v in text.split(",") if v.strip()]
    if not items:
        raise OptionError("--variants names no variant")
    return items


# -- per image ---------------------------------------------------------------------------------------------------
@dataclass
class Decoded:
    sample: Sample
    image: np.ndarray | None = None
    truth: np.ndarray | None = None
    error: str = ""


def decode(sample: Sample, spec: DatasetSpec) -> Decoded:
    """The sample's image (RGB uint8) and label (class indices, ``IGNORE``), or the reason it cannot be
    scored; never raises for a bad file."""
    from .images import load_image

    if sample.error:
        return Decoded(sample, error=sample.error)
    try:
        image = load_image(sample.image)
        truth = decode_label(sample.label, spec.layout, spec.n_classes)
    except DeopError as exc:
        return Decoded(sample, error=_named(str(exc), sample.image))
    if truth.shape != image.shape[:2]:
        return Decoded(sample, error=f"{sample.image} is {image.shape[1]}x{image.shape[0]} but its label "
                                     f"{sample.label} is {truth.shape[1]}x{truth.shape[0]}")
    return Decoded(sample, image, truth)


def _named(message: str, path: str) -> str:
    """An error message that names the file it is about (image errors name it; a few do not)."""
    return message if path in message or Path(path).name in message else f"{path}: {message}"


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
class Partial:
    """Confusion matrices summed over some images, per (dataset, run), with the images scored and the
    failures: what a scorer returns for a batch, and what the driver sums."""

    counts: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    images: dict[str, int] = field(default_factory=dict)
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (dataset, sample name, message)
    seconds: dict[str, float] = field(default_factory=dict)  # per dataset: time spent scoring its images
    # when the last of these images was scored (time.time(), the scoring process's clock): Ray hands results
    # to the driver in bursts, so the driver's receipt times would misstate a steady rate
    finished: float = 0.0

    def add(self, other: Partial) -> Partial:
        for key, counts in other.counts.items():
            mine = self.counts.get(key)
            self.counts[key] = counts.copy() if mine is None else mine + counts
        for key, n in other.images.items():
            self.images[key] = self.images.get(key, 0) + n
        self.failed += other.failed
        for key, t in other.seconds.items():
            self.seconds[key] = self.seconds.get(key, 0.0) + t
        self.finished = max(self.finished, other.finished)
        return self

    def matrix(self, spec: DatasetSpec, run: str) -> ConfusionMatrix:
        m = ConfusionMatrix(spec.n_classes, IGNORE)
        if (spec.key, run) in self.counts:
            m.counts = self.counts[(spec.key, run)]
        return m


class Scorer:
    """Scores decoded samples with one Segmenter (models loaded once); one per process or Ray actor."""

    def __init__(self, config: Any, plan: Plan, segmenter: Any = None) -> None:
        from .methods import METHODS

        if segmenter is None:
            from .pipeline import Segmenter

            segmenter = Segmenter(config)
            if any(METHODS[r.method].uses_proposals for r in plan.runs):
                segmenter.load()
            else:  # dense only: no proposal model to load (nor its checkpoint to fetch)
                _ = segmenter.clip
        self.segmenter = segmenter
        self.plan = plan

    def predict(self, spec: DatasetSpec, image: np.ndarray) -> dict[str, np.ndarray]:
        """{run name: label map at the image's size (-1 = unlabelled)}."""
        from . import protocol as tf
        from .methods import RUNS_BY_MODEL

        seg = self.segmenter
        options = seg.config.options
        out: dict[str, np.ndarray] = {}
        pipeline = [r for r in self.plan.runs if not r.protocol]
        for variant in dict.fromkeys(r.variant for r in pipeline):
            runs = [r for r in pipeline if r.variant == variant]
            methods = {r.method for r in runs}
            choice = next(c for c, ms in RUNS_BY_MODEL[seg.config.model].items() if set(ms) == methods)
            result = seg.segment(image, spec.vocabulary, choice, options=options.with_overrides(severance=variant))
            for r in runs:
                out[r.name] = result.methods[r.method].label_map
        for r in self.plan.runs:
            if r.protocol:
                vocab = spec.variant_vocabularies.get(r.variant, spec.vocabulary)
                out[r.name] = tf.predict(seg, image, vocab, r.variant, spec.protocol(r.variant), spec.background,
                                         self.plan.protocol_templates, options.n_severed)
        return out

    def score(self, decoded: Iterable[Decoded]) -> Partial:
        """One partial for a batch; an image that fails is a failure row, the batch goes on."""
        import time

        part = Partial()
        for d in decoded:
            spec = self.plan.datasets[d.sample.benchmark]
            if d.error:
                part.failed.append((spec.key, d.sample.name, d.error))
                continue
            start = time.perf_counter()
            try:
                predictions = self.predict(spec, d.image)
                matrices = {}
                for run in self.plan.runs:
                    prediction = predictions[run.name]
                    if spec.background is not None:
                        prediction = np.where(prediction < 0, spec.background, prediction)
                    m = ConfusionMatrix(spec.n_classes, IGNORE)
                    m.update(d.truth, prediction)
                    matrices[run.name] = m.counts
            except DeopError as exc:
                part.failed.append((spec.key, d.sample.name, _named(str(exc), d.sample.image)))
                continue
            except Exception as exc:  # a bug: reported with the image, its traceback on stderr, the run goes on
                traceback.print_exception(exc, file=sys.stderr)
                part.failed.append((spec.key, d.sample.name, f"{d.sample.image}: internal error "
                                                             f"({type(exc).__name__}: {exc})"))
                continue
            for name, counts in matrices.items():
                key = (spec.key, name)
                part.counts[key] = part.counts[key] + counts if key in part.counts else counts
            part.images[spec.key] = part.images.get(spec.key, 0) + 1
            part.seconds[spec.key] = part.seconds.get(spec.key, 0.0) + time.perf_counter() - start
        part.finished = time.time()
        return part


# -- reports ----------------------------------------------------------------------------------------------------
def _num(v: float) -> float | None:
    return None if v is None or math.isnan(v) else round(v, 6)


def folder_report(plan: Plan, partial: Partial, samples: Sequence[Sample], settings: dict[str, Any]
                  ) -> dict[str, Any]:
    """The folder dataset's report: one entry per method, as ``report`` has always written it."""
    spec = plan.datasets["folder"]
    scores = {r.name: MethodScores.from_matrix(r.name, partial.matrix(spec, r.name), spec.names) for r in plan.runs}
    rep = report(scores, partial.images.get("folder", 0), settings, [s.error for s in samples if s.error])
    rep["failed"] = [{"name": name, "error": error} for _, name, error in partial.failed]
    return rep


def benchmark_report(plan: Plan, partial: Partial, listed: Mapping[str, int], settings: dict[str, Any],
                     skipped: Mapping[str, str], extra: Mapping[str, Mapping[str, Any]] | None = None
                     ) -> dict[str, Any]:
    """The papers' table (one row per run, one column per benchmark, the average) and, per benchmark, its
    classes, images scored and failed (by name), mIoU, pixel accuracy and per-class IoU of every run."""
    benchmarks: dict[str, Any] = {}
    table: dict[str, dict[str, float | None]] = {r.name: {} for r in plan.runs}
    for key, spec in plan.datasets.items():
        failed = [{"name": n, "error": e} for k, n, e in partial.failed if k == key]
        images, seconds = partial.images.get(key, 0), partial.seconds.get(key, 0.0)
        entry: dict[str, Any] = {
            "title": spec.title, "classes": spec.n_classes, "layout": spec.layout.name, "listed": listed.get(key, 0),
            "images": images, "failed": failed, "seconds": round(seconds, 3),
            # per model (per actor with Ray): scoring time only, models loaded, images decoded
            "images_per_second": round(images / seconds, 4) if seconds else None,
            "miou": {}, "pixel_accuracy": {}, "unlabelled_pixels": {}, "per_class_iou": {}}
        entry.update((extra or {}).get(key, {}))
        for run in plan.runs:
            scores = MethodScores.from_matrix(run.name, partial.matrix(spec, run.name), spec.names)
            entry["miou"][run.name] = _num(scores.miou)
            entry["pixel_accuracy"][run.name] = _num(scores.pixel_accuracy)
            entry["unlabelled_pixels"][run.name] = scores.unlabelled_pixels
            entry["per_class_iou"][run.name] = {n: _num(v) for n, v in scores.per_class_iou.items()}
            table[run.name][key] = entry["miou"][run.name]
        benchmarks[key] = entry
    for row in table.values():
        values = [v for v in row.values() if v is not None]
        row["average"] = round(sum(values) / len(values), 6) if values and len(values) == len(row) else None
    return {"policy": UNLABELLED_POLICY, "settings": settings, "runs": [r.name for r in plan.runs],
            "table": table, "benchmarks": benchmarks, "skipped": dict(skipped)}


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def benchmark_markdown(rep: dict[str, Any]) -> str:
    keys = list(rep["benchmarks"])
    titles = [rep["benchmarks"][k]["title"] for k in keys]
    lines = ["# Benchmarks (mIoU, %)", "", "| method | " + " | ".join(titles) + " | Avg. |",
             "|---|" + "---:|" * (len(keys) + 1)]
    for run, row in rep["table"].items():
        lines.append(f"| {run} | " + " | ".join(_pct(row.get(k)) for k in keys) + f" | {_pct(row.get('average'))} |")
    lines.append("")
    lines.append("| benchmark | classes | images | failed |")
    lines.append("|---|---:|---:|---:|")
    for k in keys:
        b = rep["benchmarks"][k]
        lines.append(f"| {b['title']} | {b['classes']} | {b['images']} | {len(b['failed'])} |")
    for k, message in rep.get("skipped", {}).items():
        lines.append(f"| {k} | | skipped: {_cell(message)} | |")
    for k in keys:
        b = rep["benchmarks"][k]
        runs = list(b["per_class_iou"])
        lines += ["", f"## {b['title']}: per-class IoU (%)", "",
                  "| class | " + " | ".join(_cell(r) for r in runs) + " |", "|---|" + "---:|" * len(runs)]
        names = list(b["per_class_iou"][runs[0]]) if runs else []
        for name in names:
            lines.append(f"| {_cell(name)} | " + " | ".join(_pct(b["per_class_iou"][r][name]) for r in runs) + " |")
        if b["failed"]:
            lines += ["", "Failed: " + "; ".join(f"{f['name']} ({_cell(f['error'])})" for f in b["failed"])]
    lines += ["", f"{rep['policy'][0].upper()}{rep['policy'][1:]}.", ""]
    return "\n".join(lines)


def benchmark_csv(rep: dict[str, Any]) -> tuple[str, str]:
    """(the table: run, one column per benchmark, average; per class: benchmark, class index, class, run, IoU)."""
    keys = list(rep["benchmarks"])
    table, per_class = io.StringIO(), io.StringIO()
    w = csv.writer(table, lineterminator="\n")
    w.writerow(["method", *keys, "average"])
    for run, row in rep["table"].items():
        w.writerow([run, *(row.get(k) for k in keys), row.get("average")])
    w = csv.writer(per_class, lineterminator="\n")
    w.writerow(["benchmark", "class_index", "class", "method", "iou"])
    for k in keys:
        for run, values in rep["benchmarks"][k]["per_class_iou"].items():
            for i, (name, v) in enumerate(values.items()):
                w.writerow([k, i, name, run, v])
    return table.getvalue(), per_class.getvalue()


def benchmark_plot(rep: dict[str, Any], path: str | Path) -> None:
    """Grouped bars: mIoU per benchmark (and the average), one bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(rep["benchmarks"]) + ["average"]
    labels = [rep["benchmarks"][k]["title"] for k in keys[:-1]] + ["Avg."]
    runs = list(rep["table"])
    width = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(keys) * max(1, len(runs)) * 0.5 + 3), 4))
    for i, run in enumerate(runs):
        values = [100 * (rep["table"][run].get(k) or 0.0) for k in keys]
        ax.bar(np.arange(len(keys)) + i * width - 0.4 + width / 2, values, width, label=run)
    ax.set_xticks(np.arange(len(keys)), labels, rotation=30, ha="right")
    ax.set_ylabel("mIoU (%)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(scores: dict[str, MethodScores], images: int, settings: dict[str, Any],
           warnings: Sequence[str]) -> dict[str, Any]:
    """The folder dataset's report: one entry per method, with the images scored."""
    return {
        "images": images, "policy": UNLABELLED_POLICY, "settings": settings, "warnings": list(warnings),
        "methods": {m: {"miou": _num(s.miou), "pixel_accuracy": _num(s.pixel_accuracy), "pixels": s.pixels,
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
