"""What one ``Segmenter.segment`` call returns, and its JSON form.

Maps are kept at the working size (the image as the models saw it, long side at most ``max_side``) and
mapped to the input size only when asked (``label_map``, ``segment_map``, ``mask``, the JSON's RLE), by the
package's one nearest-neighbour formula: a 48-megapixel upload then costs what its working size costs,
and only the files a user downloads are made at full size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import rle
from .images import nearest_resize

STAGES = ("proposals", "image_encoding", "text_encoding", "classification", "total")


def compact(labels: np.ndarray) -> np.ndarray:
    """A map of ids -1..n as int16 when they fit (any vocabulary the parser allows, any SAM mask count):
    half the bytes a result holds for as long as a session keeps it. Maps handed out are int32."""
    if labels.size and labels.max() < np.iinfo(np.int16).max and labels.min() >= -1:
        return labels.astype(np.int16)
    return labels.astype(np.int32)


@dataclass
class Segment:
    """One proposal and how a method labelled it. Box (x0, y0, x1, y1, exclusive ends) and area are in
    input-image pixels; ``label`` is -1 when the segment is unlabelled (below the "none" threshold)."""

    id: int
    box: tuple[int, int, int, int]
    area: int
    label: int
    score: float
    top5: list[tuple[str, float]]

    def to_dict(self, classes: list[str]) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": classes[self.label] if self.label >= 0 else None,
            "label_index": self.label,
            "score": round(self.score, 6),
            "area": self.area,
            "box": list(self.box),
            "top5": [[name, round(p, 6)] for name, p in self.top5],
        }


@dataclass
class MethodResult:
    """One method's answer. ``work_label_map`` is (h, w) at the working size, -1 = unlabelled (stored
    compactly, see ``compact``); ``label_map`` is the same at the input size (``input_size``, computed on
    each access, int32).

    timings: seconds per stage (see ``STAGES``), CUDA-synchronised, as spent by this call: a reused stage
    counts zero and is named in ``cached``. first_run_timings: the same with each reused stage at what it
    cost when it was computed, so that a re-query still shows the honest one-pass vs crop comparison.
    """

    method: str
    work_label_map: np.ndarray
    segments: list[Segment]
    timings: dict[str, float]
    cached: list[str] = field(default_factory=list)
    first_run_timings: dict[str, float] = field(default_factory=dict)
    input_size: tuple[int, int] | None = None

    @property
    def label_map(self) -> np.ndarray:
        """(H, W) int32 at the input size."""
        return self.label_map_at(self.input_size or self.work_label_map.shape)

    def label_map_at(self, shape: tuple[int, int]) -> np.ndarray:
        """The label map (int32) at any size (a picture's, say), by the package's nearest-neighbour rule."""
        return nearest_resize(self.work_label_map, tuple(shape[:2])).astype(np.int32)

    def to_dict(self, classes: list[str]) -> dict[str, Any]:
        present = np.unique(self.work_label_map[self.work_label_map >= 0])
        return {
            "method": self.method,
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
            "cached": list(self.cached),
            "first_run_timings": {k: round(v, 6) for k, v in self.first_run_timings.items()},
            "classes_present": [classes[i] for i in present],
            "segments": [s.to_dict(classes) for s in self.segments],
        }


@dataclass
class SegmentationResult:
    """Everything one call produced; sizes are the input image's, maps the working size's.

    work_segment_map: (h, w) int32 proposal index per pixel at the working size (-1 none), None without
        proposals; ``segment_map`` and ``mask(i)`` give it at the input size.
    similarity: (C, gh, gw) cosine similarity of each class with each CLIP patch (the heatmaps), when
        the dense pass ran.
    comparison: the two methods compared side by side (method "both": one-pass, then crop), else None.
    agreement: when both compared methods ran, the share of segments (and of segment pixels) they gave
        the same label.
    pending: methods of this request still running (a streamed partial result); empty when complete.
    added: the segments a user added by clicks, as the JSON's ``added_segments`` (``deop.explore.with_added``).

    In JSON, ``segment_masks[i]`` is segment i's pixels as COCO RLE (``deop.rle.decode`` or pycocotools'
    ``mask.decode`` read it), so each segment of each method can be saved and evaluated with its label.
    """

    classes: list[str]
    image_size: tuple[int, int]  # (height, width)
    methods: dict[str, MethodResult]
    work_segment_map: np.ndarray | None = None
    similarity: np.ndarray | None = None
    agreement: dict[str, float] | None = None
    random_weights: bool = False
    warnings: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    comparison: tuple[str, str] | None = None
    pending: list[str] = field(default_factory=list)
    added: list[dict[str, Any]] = field(default_factory=list)  # segments added by clicks (explore.with_added)

    @property
    def primary(self) -> str:
        """The method whose answer is shown first and saved without a suffix: the first one run."""
        return next(iter(self.methods))

    @property
    def segment_map(self) -> np.ndarray | None:
        """(H, W) int32 proposal index per pixel at the input size (-1 none)."""
        if self.work_segment_map is None:
            return None
        return nearest_resize(self.work_segment_map, self.image_size).astype(np.int32)

    def mask(self, index: int) -> np.ndarray:
        """Segment `index`'s pixels at the input size."""
        if self.work_segment_map is None:
            raise ValueError("this result has no proposals (method 'dense')")
        return self.segment_map == index

    def speedup(self, stage_set: str = "total") -> float | None:
        """The compared baseline's time over the first method's (crop over one pass): end to end ("total")
        or for the CLIP stages alone ("clip", image encoding and classification)."""
        if self.comparison is None or not set(self.comparison) <= self.methods.keys():
            return None
        fast, baseline = (self.methods[n] for n in self.comparison)
        if not baseline.segments:
            return None  # no proposals: nothing was compared

        def cost(m: MethodResult) -> float:
            t = m.first_run_timings or m.timings
            return t["total"] if stage_set == "total" else t["image_encoding"] + t["classification"]

        one, crop = cost(fast), cost(baseline)
        return crop / one if one > 0 else None

    def comparison_summary(self) -> Comparison | None:
        """The speed-up in words' ingredients, for the app's readout and the CLI's timing line alike."""
        clip = self.speedup("clip")
        if not clip:
            return None
        n = len(self.methods[self.comparison[1]].segments)
        return Comparison(clip, self.speedup("total"), n, one_pass_won=clip >= 1)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "classes": list(self.classes),
            "image_size": {"height": self.image_size[0], "width": self.image_size[1]},
            "random_weights": self.random_weights,
            "warnings": list(self.warnings),
            "settings": self.settings,
            "methods": {name: m.to_dict(self.classes) for name, m in self.methods.items()},
        }
        if self.work_segment_map is not None:
            n = max((len(m.segments) for m in self.methods.values()), default=0)
            masks = rle.encode_segments_resized(self.work_segment_map, n, self.image_size)
            out["segment_masks"] = [{"id": i, **r} for i, r in enumerate(masks)]
        if self.added:
            out["added_segments"] = self.added
        if self.agreement is not None:
            out["agreement"] = self.agreement
            out["speedup"] = {"total": self.speedup("total"), "clip": self.speedup("clip")}
        return out


@dataclass(frozen=True)
class Comparison:
    """One pass against the crop baseline on one image: the CLIP-stage and end-to-end ratios (crop time
    over one-pass time) and how many segments they classified. With few segments the crops can win."""

    clip: float
    total: float | None
    n_segments: int
    one_pass_won: bool

    @property
    def segments(self) -> str:
        return f"{self.n_segments} segment{'' if self.n_segments == 1 else 's'}"


def agreement(a: MethodResult, b: MethodResult) -> dict[str, float]:
    """Share of segments, and of their pixels, that two methods labelled the same."""
    if not a.segments:
        return {"segments": 1.0, "pixels": 1.0, "n_segments": 0}
    same = np.array([x.label == y.label for x, y in zip(a.segments, b.segments)])
    area = np.array([x.area for x in a.segments], dtype=np.float64)
    return {"segments": float(same.mean()), "pixels": float((same * area).sum() / max(area.sum(), 1.0)),
            "n_segments": len(same)}
