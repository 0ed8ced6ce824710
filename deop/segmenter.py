"""The Segmenter: proposals, one CLIP pass, classification, and the crop baseline on the same proposals.

Like SAM's predictor caches an image embedding, a Segmenter caches per image (by content and settings)
its proposals, its dense CLIP features and its crop embeddings, so that a new vocabulary or threshold on
the same image only re-encodes new class names and re-pools.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from .cache import LRUCache
from .classify import dense_features, dense_labels, dense_similarity, encode_crops, pool_segments, probabilities
from .config import METHODS, SegmenterConfig, SegmentOptions
from .images import image_key, load_image, resize_max_side
from .models import MODELS, RANDOM_WEIGHTS_WARNING, ClipModel, ModelCache, resolve_device
from .proposals import Proposals, generate_proposals
from .result import MethodResult, Segment, SegmentationResult
from .text_embeddings import TextEmbeddingCache, overlong_names
from .timing import Deadline, stopwatch
from .vocabulary import Vocabulary, parse_vocabulary

Progress = Callable[[float, str], None]


class DeviceOutOfMemory(RuntimeError):
    """The device ran out of memory; the caches were emptied so that the next request can run."""


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA raises ``OutOfMemoryError``; Apple's MPS and the CPU allocator raise a plain RuntimeError
    ("MPS backend out of memory", "DefaultCPUAllocator: can't allocate memory")."""
    message = str(exc)
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message))


@dataclass
class TimedValue:
    """A cached stage's value with what it cost when it was computed: a cache hit reports the first run's
    cost, so the app can show what was saved. Public so that a subclass (the bench's fixed proposals)
    can return its own stage values."""

    value: Any
    seconds: float


def nearest_resize(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an integer map by index arithmetic (no interpolation of labels)."""
    h, w = array.shape[:2]
    if (h, w) == tuple(shape):
        return array
    rows = np.arange(shape[0]) * h // shape[0]
    cols = np.arange(shape[1]) * w // shape[1]
    return array[rows[:, None], cols[None, :]]


class Segmenter:
    """Open-vocabulary segmentation of images with DeOP's one-pass classifier and the crop baseline.

    Models load on first use (or on ``load()``) and are shared through ``deop.models.MODELS``.
    """

    def __init__(self, config: SegmenterConfig | None = None, models: ModelCache = MODELS) -> None:
        self.config = config or SegmenterConfig()
        self.device = resolve_device(self.config.device)
        self.models = models
        self.text_cache = TextEmbeddingCache()
        self._proposals = LRUCache(self.config.cache_size)
        self._features = LRUCache(self.config.cache_size)
        self._crops = LRUCache(self.config.cache_size)
        self.stage_runs = {"proposals": 0, "dense": 0, "crops": 0}  # how often each expensive stage ran

    # -- models ---------------------------------------------------------------------------------
    @property
    def clip(self) -> ClipModel:
        c = self.config
        pretrained = None if c.random_weights else c.clip_pretrained
        return self.models.clip(c.clip_model, pretrained, self.device, c.half)

    @property
    def sam(self) -> torch.nn.Module:
        return self.sam_at(self.config.options.proposals.sam_input_size)

    def sam_at(self, input_size: int = 1024) -> torch.nn.Module:
        """SAM with its encoder run at `input_size` (weights shared with the 1024 px model)."""
        c = self.config
        return self.models.sam(c.sam_kind, self.device, c.random_weights, c.checkpoint_dir, c.download,
                                input_size)

    def with_proposal_model(self, sam_kind: str) -> Segmenter:
        """A Segmenter that differs only in its proposal model, sharing this one's model cache and text
        embeddings (switching models never reloads CLIP or re-encodes a vocabulary); its proposal and
        feature caches are its own."""
        other = Segmenter(replace(self.config, sam_kind=sam_kind), models=self.models)
        other.text_cache = self.text_cache
        return other

    def load(self) -> None:
        """Load (or fetch) both models now rather than on the first request; SAM first, its checkpoint
        being the file most likely to be missing."""
        _ = self.sam, self.clip

    def clear_cache(self) -> None:
        for cache in (self._proposals, self._features, self._crops):
            cache.clear()

    # -- cached stages ---------------------------------------------------------------------------
    def _timed(self, cache: LRUCache, key: tuple, stage: str, compute: Callable[[], Any]) -> tuple[TimedValue, bool]:
        def run() -> TimedValue:
            record: dict[str, float] = {}
            with stopwatch(record, stage, self.device):
                value = compute()
            self.stage_runs[stage] += 1
            return TimedValue(value, record[stage])

        return cache.get_or_compute(key, run)

    def proposals(self, image: np.ndarray, options: SegmentOptions, key: str | None = None,
                  deadline: Deadline | None = None) -> tuple[TimedValue, bool]:
        key = (key or image_key(image), self.config.sam_kind, self.config.random_weights, options.proposals)
        return self._timed(self._proposals, key, "proposals",
                           lambda: generate_proposals(self.sam_at(options.proposals.sam_input_size), image,
                                                      options.proposals, deadline))

    def features(self, image: np.ndarray, options: SegmentOptions, key: str | None = None
                 ) -> tuple[TimedValue, bool]:
        clip = self.clip
        key = (key or image_key(image), clip.key, options.clip_size, options.severance, options.n_severed)
        return self._timed(self._features, key, "dense",
                           lambda: dense_features(clip, image, options.clip_size, options.severance,
                                                  options.n_severed))

    def crop_embeddings(self, image: np.ndarray, proposals: Proposals, options: SegmentOptions,
                        key: str | None = None, deadline: Deadline | None = None) -> tuple[TimedValue, bool]:
        clip = self.clip
        key = (key or image_key(image), clip.key, self.config.sam_kind, options.proposals, options.crop_margin)
        return self._timed(self._crops, key, "crops",
                           lambda: encode_crops(clip, image, proposals, options.crop_margin,
                                                options.crop_batch_size, deadline))

    # -- the call ---------------------------------------------------------------------------------
    def segment(self, image: Any, vocabulary: str | Vocabulary, method: str = "both",
                options: SegmentOptions | None = None, progress: Progress | None = None,
                timeout: float | None = None, **overrides: Any) -> SegmentationResult:
        """Segment `image` (path, bytes, PIL image or array) into the classes of `vocabulary`.

        method: "one-pass" (DeOP), "crop" (one CLIP pass per proposal), "both" (same proposals, timed
        side by side) or "dense" (per-pixel classification from the dense map, no SAM). Any
        ``SegmentOptions`` field, or a ``ProposalConfig`` field, may be given as a keyword override.
        timeout: seconds after which the request stops between two steps with ``SegmentTimeout``.
        Running out of memory (GPU or CPU) empties the caches and becomes ``DeviceOutOfMemory``: the next
        request runs normally.
        """
        try:
            return self._segment(image, vocabulary, method, options, progress, Deadline(timeout), overrides)
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
            self.clear_cache()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if self.device.type == "mps":
                torch.mps.empty_cache()
            where, advice = ("this machine", "") if self.device.type == "cpu" else ("the GPU", ", or --device cpu")
            raise DeviceOutOfMemory(f"{where} ran out of memory on this image; try a smaller max side or CLIP "
                                    f"size, fewer masks{advice}") from exc

    def _segment(self, image: Any, vocabulary: str | Vocabulary, method: str, options: SegmentOptions | None,
                 progress: Progress | None, deadline: Deadline, overrides: dict[str, Any]) -> SegmentationResult:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        opts = (options or self.config.options).with_overrides(**overrides)
        report = progress or (lambda fraction, desc: None)
        original = load_image(image)
        vocab = vocabulary if isinstance(vocabulary, Vocabulary) else parse_vocabulary(vocabulary)
        warnings = list(vocab.warnings)
        if self.config.random_weights:
            warnings.insert(0, RANDOM_WEIGHTS_WARNING)
        work = resize_max_side(original, opts.max_side)
        key = image_key(work)
        runs = ["one-pass", "crop"] if method == "both" else [method]
        shape = original.shape[:2]

        report(0.05, "Encoding class names")
        clip = self.clip
        text_time: dict[str, float] = {}
        with stopwatch(text_time, "text_encoding", self.device):
            text = self.text_cache.vocabulary(clip, vocab, opts.templates)
        warnings += [f"class name too long for CLIP, truncated: {n[:60]}…"
                     for n in overlong_names(clip, [p for c in vocab.classes for p in c.prompts], opts.templates)]

        props = None
        shared: dict[str, float] = {"proposals": 0.0}
        cost: dict[str, float] = {"proposals": 0.0}
        cached: list[str] = []
        if "one-pass" in runs or "crop" in runs:
            report(0.1, "Proposing masks with Segment Anything")
            timed, hit = self.proposals(work, opts, key, deadline)
            props = timed.value
            shared["proposals"], cost["proposals"] = (0.0 if hit else timed.seconds), timed.seconds
            cached += ["proposals"] if hit else []

        segment_map, areas = None, None
        if props is not None:  # areas in input pixels, counted once on the full-size map
            segment_map = nearest_resize(props.segment_map, shape)
            areas = np.bincount(segment_map[segment_map >= 0].ravel(), minlength=len(props))
        methods: dict[str, MethodResult] = {}
        similarity = None
        for i, name in enumerate(runs):
            deadline.check(name)
            report(0.4 + 0.5 * i / len(runs), f"Classifying ({name})")
            timings = {"proposals": shared["proposals"], "text_encoding": text_time["text_encoding"]}
            first = {"proposals": cost["proposals"], "text_encoding": text_time["text_encoding"]}
            reused = list(cached)
            if name == "crop":
                timed, hit = self.crop_embeddings(work, props, opts, key, deadline)
                timings["image_encoding"] = 0.0 if hit else timed.seconds
                first["image_encoding"] = timed.seconds
                reused += ["image_encoding"] if hit else []
                with stopwatch(timings, "classification", self.device):
                    probs = probabilities(timed.value, text, opts.logit_scale)
                    label_map = self._proposal_labels(props, probs, opts.none_threshold, None)
            else:
                timed, hit = self.features(work, opts, key)
                timings["image_encoding"] = 0.0 if hit else timed.seconds
                first["image_encoding"] = timed.seconds
                reused += ["image_encoding"] if hit else []
                with stopwatch(timings, "classification", self.device):
                    sim = dense_similarity(timed.value, text)
                    similarity = sim.cpu().numpy()
                    fill = None
                    if name == "dense" or opts.fill_uncovered:
                        fill = dense_labels(sim, work.shape[:2], opts.logit_scale, opts.none_threshold)[0]
                    if name == "dense":
                        probs, label_map = None, fill
                    else:
                        probs = probabilities(pool_segments(timed.value, props), text, opts.logit_scale)
                        label_map = self._proposal_labels(props, probs, opts.none_threshold, fill)
            first["classification"] = timings["classification"]
            for record in (timings, first):
                record["total"] = sum(record[s] for s in ("proposals", "image_encoding", "text_encoding",
                                                          "classification"))
            segments = [] if probs is None else self._segments(props, probs, vocab.names, opts.none_threshold,
                                                               work.shape[:2], segment_map, areas)
            methods[name] = MethodResult(name, nearest_resize(label_map, shape), segments, timings, reused, first)

        out = SegmentationResult(
            classes=vocab.names, image_size=shape, methods=methods, segment_map=segment_map,
            similarity=similarity, random_weights=self.config.random_weights, warnings=warnings,
            settings=self._settings(opts, method, work.shape[:2]),
        )
        if method == "both":
            out.agreement = agreement(methods["one-pass"], methods["crop"])
        return out

    # -- helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _proposal_labels(props: Proposals, probs: torch.Tensor, threshold: float,
                         fill: np.ndarray | None) -> np.ndarray:
        best, label = probs.max(dim=-1) if len(probs) else (torch.zeros(0), torch.zeros(0, dtype=torch.long))
        seg_label = label.cpu().numpy().astype(np.int32)
        seg_label[best.cpu().numpy() < threshold] = -1
        lookup = np.append(seg_label, -1).astype(np.int32)  # index -1 → the appended "no segment"
        label_map = lookup[props.segment_map]
        if fill is not None:
            label_map = np.where(props.segment_map >= 0, label_map, fill).astype(np.int32)
        return label_map

    @staticmethod
    def _segments(props: Proposals, probs: torch.Tensor, names: list[str], threshold: float,
                  work_shape: tuple[int, int], segment_map: np.ndarray, areas: np.ndarray) -> list[Segment]:
        k = min(5, probs.shape[1])
        top_p, top_i = (t.cpu().numpy() for t in probs.topk(k, dim=-1))
        shape = segment_map.shape
        sy, sx = shape[0] / work_shape[0], shape[1] / work_shape[1]
        segments = []
        for i in range(len(props)):
            x0, y0, x1, y1 = props.boxes[i]
            box = (int(x0 * sx), int(y0 * sy), min(shape[1], int(np.ceil(x1 * sx))),
                   min(shape[0], int(np.ceil(y1 * sy))))
            best = float(top_p[i, 0])
            label = int(top_i[i, 0]) if best >= threshold else -1
            top5 = [(names[j], float(p)) for j, p in zip(top_i[i], top_p[i])]
            segments.append(Segment(i, box, int(areas[i]), label, best, top5))
        return segments

    def _settings(self, opts: SegmentOptions, method: str, work_shape: tuple[int, int]) -> dict[str, Any]:
        c = self.config
        return {
            "method": method, "device": str(self.device), "clip_model": c.clip_model,
            "clip_pretrained": None if c.random_weights else c.clip_pretrained, "sam_kind": c.sam_kind,
            "random_weights": c.random_weights, "torch_threads": torch.get_num_threads(),
            "working_size": {"height": work_shape[0], "width": work_shape[1]}, "options": asdict(opts),
        }


def agreement(a: MethodResult, b: MethodResult) -> dict[str, float]:
    """Share of segments, and of their pixels, that two methods labelled the same."""
    if not a.segments:
        return {"segments": 1.0, "pixels": 1.0, "n_segments": 0}
    same = np.array([x.label == y.label for x, y in zip(a.segments, b.segments)])
    area = np.array([x.area for x in a.segments], dtype=np.float64)
    return {"segments": float(same.mean()), "pixels": float((same * area).sum() / max(area.sum(), 1.0)),
            "n_segments": len(same)}
