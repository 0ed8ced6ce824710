"""What a researcher asks of an image already segmented, answered from its caches: DeOP's idea is to pay
for the image once, then answer many questions cheaply.

``add_segment``: a point prompt to SAM's mask decoder on the image embedding kept with the proposals (no
new encoder pass), the mask classified from the cached dense CLIP map like every other segment;
``compare_variants``: the same proposals classified with each training-free severance variant, each
variant's dense map cached like DeOP's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from . import rle
from .clip.severance import COMPARED_VARIANTS, SEVERANCE_VARIANTS
from .images import image_key, nearest_indices
from .result import MethodResult, SegmentationResult, agreement, compact
from .timing import Deadline, synchronize
from .vocabulary import Vocabulary, parse_vocabulary

if TYPE_CHECKING:
    from .config import SegmentOptions
    from .pipeline import Segmenter

Point = tuple[float, float, bool]  # x, y in the image's pixels; True for a positive point


@dataclass
class AddedSegment:
    """A segment added by point prompts. mask: (h, w) bool at the image's size; label -1 when its best
    probability is below the "none of these" threshold; seconds: the server's time for it (decoder,
    pooling, scoring); reused: the cached stages it was answered from."""

    mask: np.ndarray
    points: list[Point]
    logits: np.ndarray = field(repr=False)
    sam_score: float
    label: int
    score: float
    top5: list[tuple[str, float]]
    seconds: float
    reused: list[str]

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def nbytes(self) -> int:
        """What a session holding it keeps (its mask and SAM's logits), for the sessions' byte budget."""
        return int(self.mask.nbytes + self.logits.nbytes)


def _training_free_only(segmenter: Segmenter, message: str) -> None:
    if segmenter.config.trained:
        from .errors import OptionError

        raise OptionError(message)


def add_segment(segmenter: Segmenter, image: np.ndarray, vocabulary: str | Vocabulary, points: Sequence[Point],
                options: SegmentOptions | None = None, previous: AddedSegment | None = None,
                timeout: float | None = None, cancelled: Callable[[], bool] | None = None) -> AddedSegment:
    """The segment SAM's decoder gives for `points` on `image` (at the size it was segmented at), labelled
    by the one-pass method. With `previous` (the segment being refined), its low-resolution logits seed
    the decoder, as SAM's interactive tools do. Proposals and features come from the segmenter's caches
    when `image` was segmented with these options (the app's case), else they are computed first, under
    `timeout` and `cancelled` like ``Segmenter.segment`` (the cache may have dropped them)."""
    _training_free_only(segmenter, "a click cannot add a segment with the deop-trained model: its generator "
                        "has 100 learned queries and no prompt encoder, so there is nothing to decode a point prompt "
                        "(use the training-free model with a SAM to add segments by clicking)")
    opts = options or segmenter.config.options
    vocab = vocabulary if isinstance(vocabulary, Vocabulary) else parse_vocabulary(vocabulary)
    key, deadline = image_key(image), Deadline(timeout, cancelled)
    proposals, hit_p = segmenter.proposals(image, opts, key, deadline)
    deadline.check("the CLIP pass")
    features, hit_f = segmenter.features(image, opts, key)
    text = segmenter.text_cache.vocabulary(segmenter.clip, vocab, opts.templates)
    synchronize(segmenter.device)
    start = time.perf_counter()
    proposer = segmenter.proposer_at(opts.proposals.sam_input_size)
    seed = previous.logits if previous is not None and len(points) > 1 else None
    mask, sam_score, logits = proposer.point_mask(proposals.value, points, seed)
    label, score, top5 = _classify(features.value, text, mask, vocab, opts)
    synchronize(segmenter.device)
    seconds = time.perf_counter() - start
    reused = (["proposals"] if hit_p else []) + (["image_encoding"] if hit_f else [])
    return AddedSegment(mask, list(points), logits, sam_score, label, score, top5, seconds, reused)


def relabel(segmenter: Segmenter, image: np.ndarray, vocabulary: str | Vocabulary, segment: AddedSegment,
            options: SegmentOptions | None = None) -> AddedSegment:
    """An added segment's label, score and top-5 for another vocabulary (or threshold, or templates): its
    mask as it is, pooled from the dense map (cached with the image's features), so an edit that re-runs
    from the caches keeps the segments a user added."""
    opts = options or segmenter.config.options
    vocab = vocabulary if isinstance(vocabulary, Vocabulary) else parse_vocabulary(vocabulary)
    features, _ = segmenter.features(image, opts, image_key(image))
    text = segmenter.text_cache.vocabulary(segmenter.clip, vocab, opts.templates)
    label, score, top5 = _classify(features.value, text, segment.mask, vocab, opts)
    return replace(segment, label=label, score=score, top5=top5)


def with_added(result: SegmentationResult, added: Sequence[AddedSegment]) -> SegmentationResult:
    """The result as its downloads give it with the segments added by clicks: each painted over the primary
    method's labels in the order added (the last on top, as the app's overlay shows them; one below the "none
    of these" threshold leaves its pixels unlabelled), and listed in the JSON's ``added_segments`` with its
    label, score, top-5, SAM's predicted IoU, its points and its mask as COCO RLE, all at the input size.
    Without added segments, the result itself."""
    if not added:
        return result
    primary = result.methods[result.primary]
    labels = primary.work_label_map.astype(np.int32)
    (h, w), (height, width) = labels.shape, result.image_size
    listed = []
    for k, seg in enumerate(added):
        labels[seg.mask] = seg.label
        one = seg.mask.astype(np.int32) - 1  # a segment map of one segment: 0 inside, -1 outside
        size = result.image_size
        listed.append({
            "id": f"+{k + 1}", "label": result.classes[seg.label] if seg.label >= 0 else None,
            "label_index": seg.label, "score": round(seg.score, 6), "sam_score": round(float(seg.sam_score), 6),
            "area": int(rle.area_resized(one, 1, size)[0]), "box": resized_box(seg.mask, size),
            "top5": [[name, round(p, 6)] for name, p in seg.top5],
            "points": [[round(x * width / w, 2), round(y * height / h, 2), bool(positive)]
                       for x, y, positive in seg.points],
            "mask": rle.encode_segments_resized(one, 1, size)[0]})
    methods = {**result.methods, result.primary: replace(primary, work_label_map=compact(labels))}
    return replace(result, methods=methods, added=listed)


def resized_box(mask: np.ndarray, size: tuple[int, int]) -> list[int]:
    """[x0, y0, x1, y1] of `mask` resized to `size` by ``images.nearest_resize``, without making the resized
    mask (48 MB per added segment for a 48 MP upload): an output column holds the mask where its source
    column does in some source row that the output rows use, and likewise for rows. [0, 0, 0, 0] if empty."""
    rows, cols = nearest_indices(mask.shape[0], size[0]), nearest_indices(mask.shape[1], size[1])
    xs = np.flatnonzero(mask[np.unique(rows)].any(axis=0)[cols])
    ys = np.flatnonzero(mask[:, np.unique(cols)].any(axis=1)[rows])
    return [int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1] if len(xs) else [0, 0, 0, 0]


def _classify(features: Any, text: Any, mask: np.ndarray, vocab: Vocabulary, opts: SegmentOptions
              ) -> tuple[int, float, list[tuple[str, float]]]:
    """One mask's one-pass label (-1 below the "none of these" threshold), its probability and top-5."""
    from .classify import labels_from, pool_map, probabilities

    probs = probabilities(pool_map(features, np.where(mask, 0, -1), 1), text, opts.logit_scale)
    labels, best = labels_from(probs, opts.none_threshold)
    top_p, top_i = (t[0].cpu().numpy() for t in probs.topk(min(5, probs.shape[1]), dim=-1))
    return int(labels[0]), float(best[0]), [(vocab.names[j], float(p)) for j, p in zip(top_i, top_p)]


@dataclass
class VariantRun:
    """One severance variant on the shared proposals. clip_seconds: its dense pass (what it cost when
    computed, also when it was reused now); agreement: with the reference variant's labels."""

    variant: str
    description: str
    method: MethodResult
    clip_seconds: float
    reused: bool
    agreement: dict[str, float] | None = None


def compare_variants(segmenter: Segmenter, image: np.ndarray, vocabulary: str | Vocabulary,
                     options: SegmentOptions | None = None, variants: Sequence[str] | None = None,
                     reference: str = "deop", input_size: tuple[int, int] | None = None,
                     timeout: float | None = None, cancelled: Callable[[], bool] | None = None
                     ) -> Iterator[VariantRun]:
    """Each variant's one-pass answer on the same proposals and text, one at a time (the reference first),
    each with its agreement with the reference's labels. `timeout` holds for all of them together. By default
    the published variants (``COMPARED_VARIANTS``: ablations only by name)."""
    _training_free_only(segmenter, "the severance variants are the training-free model's; the deop-trained "
                        "model has its own mask-guided severance (use the training-free model to compare them)")
    opts = options or segmenter.config.options
    names = list(variants or COMPARED_VARIANTS)
    names = [reference] + [n for n in names if n != reference] if reference in names else names
    ref: MethodResult | None = None
    end = None if timeout is None else time.monotonic() + timeout
    for name in names:
        left = None if end is None else max(0.0, end - time.monotonic())
        result = segmenter.segment(image, vocabulary, "one-pass", options=opts.with_overrides(severance=name),
                                   input_size=input_size, timeout=left, cancelled=cancelled)
        method = result.methods["one-pass"]
        ref = method if name == reference else ref
        yield VariantRun(name, SEVERANCE_VARIANTS[name].description, method,
                         method.first_run_timings["image_encoding"], "image_encoding" in method.cached,
                         agreement(ref, method) if ref is not None else None)


def label_changes(runs: Sequence[VariantRun], classes: list[str], limit: int = 20) -> list[dict[str, Any]]:
    """The segments whose label differs between variants, largest first: {"id", "area", variant: label}."""
    if not runs:
        return []
    rows = []
    for i, seg in enumerate(runs[0].method.segments):
        labels = [r.method.segments[i].label for r in runs]
        if len(set(labels)) > 1:
            rows.append({"id": seg.id, "area": seg.area,
                         **{r.variant: classes[lab] if lab >= 0 else "(none)" for r, lab in zip(runs, labels)}})
    return sorted(rows, key=lambda r: -r["area"])[:limit]
