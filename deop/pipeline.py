"""The Segmenter: proposals, one CLIP pass, classification, and the crop baseline on the same proposals.

It only orchestrates: which stages a request needs comes from its methods (``deop.methods``), what each
stage computes from ``deop.proposers`` and ``deop.classify``, and the answer's shape from ``deop.result``.
Like SAM's predictor caches an image embedding, a Segmenter caches per image (by content and settings)
its proposals, its dense CLIP features and its crop embeddings, so that a new vocabulary or threshold on
the same image only re-encodes new class names and re-pools.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from . import rle
from .cache import Stage, StageCache, TimedValue
from .classify import dense_features, encode_crops, labels_from
from .clip.severance import COMPARED_VARIANTS
from .config import SegmenterConfig, SegmentOptions
from .errors import DeviceOutOfMemory
from .images import check_proportions, image_key, load_image, resize_max_side
from .methods import Labels, Method, methods_of
from .models import MODELS, RANDOM_WEIGHTS_WARNING, ModelCache, resolve_device
from .proposers import Proposals, Proposer, get_proposer
from .result import MethodResult, Segment, SegmentationResult, agreement, compact
from .timing import Deadline, stopwatch
from .vocabulary import Vocabulary, parse_vocabulary

Progress = Callable[[float, str], None]
__all__ = ["Segmenter", "Request", "TimedValue", "DeviceOutOfMemory", "is_out_of_memory"]


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA raises ``OutOfMemoryError``; Apple's MPS and the CPU allocator raise a plain RuntimeError
    ("MPS backend out of memory", "DefaultCPUAllocator: can't allocate memory")."""
    message = str(exc)
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message))


@dataclass
class Request:
    """One call once prepared: what every method reads. ``work`` is the image at the working size (long
    side at most ``options.max_side``); results are mapped back to ``input_size``."""

    options: SegmentOptions
    vocabulary: Vocabulary
    text: torch.Tensor
    text_seconds: float
    work: np.ndarray
    key: str
    input_size: tuple[int, int]
    deadline: Deadline
    warnings: list[str] = field(default_factory=list)
    proposals: Proposals | None = None
    proposal_seconds: tuple[float, float] = (0.0, 0.0)  # (this call, first run)
    reused: list[str] = field(default_factory=list)


class Segmenter:
    """Open-vocabulary segmentation of images with DeOP's one-pass classifier and the crop baseline.

    Models load on first use (or on ``load()``) and are shared through ``deop.models.MODELS``.
    """

    def __init__(self, config: SegmenterConfig | None = None, models: ModelCache = MODELS) -> None:
        self.config = config or SegmenterConfig()
        self.device = resolve_device(self.config.device)
        self.proposer_spec = get_proposer(self.config.proposal_model)
        self.models = models
        from .clip.text import TextEmbeddingCache

        self.text_cache = TextEmbeddingCache()
        # Dense maps are small (0.5-5 MB) and the variants compared side by side each keep one per image.
        size = self.config.cache_size
        sizes = {"proposals": size, "dense": size * len(COMPARED_VARIANTS), "crops": size, "trained": size}
        self.stages = {name: StageCache(name, n, self.device) for name, n in sizes.items()}

    # -- models ---------------------------------------------------------------------------------
    @property
    def clip(self):
        c = self.config
        if c.trained:  # the crop baseline and the text run on the trained model's own CLIP
            return self.trained.clip_view
        pretrained = None if c.random_weights else c.clip_pretrained
        return self.models.clip(c.clip_model, pretrained, self.device, self.precision)

    @property
    def precision(self) -> str:
        """The precision both models run at: the configured one, or ``auto``'s choice."""
        return self.precision_choice.precision

    @property
    def precision_choice(self) -> Any:
        """``deop.precision.Choice``; ``auto`` measures once per device and pair of models (at load)."""
        from .precision import SAM_SIZE, Choice, calibrate

        c = self.config
        if c.trained:  # its modules are not under the precision setting: it runs as released, in float32
            return Choice("float32", (), {}, "the trained model runs in float32")
        if c.precision != "auto":
            return Choice(c.precision, (), {}, "asked for")
        pretrained = None if c.random_weights else c.clip_pretrained

        def measure() -> Choice:
            # at the fast preset's input: the model its requests use, built once and kept in the cache
            proposer = self.models.proposer(c.sam_kind, self.device, c.random_weights, c.checkpoint_dir, c.download,
                                            input_size=SAM_SIZE)
            return calibrate(self.models.clip(c.clip_model, pretrained, self.device), proposer, self.device)

        return self.models.get(("precision", str(self.device), c.clip_model, pretrained, c.sam_kind), measure)

    @property
    def trained(self):
        """The paper's trained classifier (``deop.trained``), loaded once and shared."""
        c = self.config
        return self.models.trained(self.device, c.random_weights, c.deop_checkpoint, c.checkpoint_dir, c.download)

    @property
    def proposer(self) -> Proposer:
        """The proposal model at the default options' encoder input size."""
        return self.proposer_at(self.config.options.proposals.sam_input_size)

    def proposer_at(self, input_size: int) -> Proposer:
        """The proposal model with its encoder run at `input_size` (weights shared with the full model)."""
        c = self.config
        proposer = self.models.proposer(c.proposal_model, self.device, c.random_weights, c.checkpoint_dir,
                                        c.download, input_size, c.deop_checkpoint if c.trained else None)
        return replace(proposer, precision=self.precision)

    def with_proposal_model(self, sam_kind: str) -> Segmenter:
        """A Segmenter that differs only in its proposal model, sharing this one's model cache and text
        embeddings (switching models never reloads CLIP or re-encodes a vocabulary); its stage caches are
        its own. The trained model's generator ("deop-trained") brings the trained model with it (its
        classifier needs that generator's queries); any other choice runs the training-free model."""
        from .config import TRAINED_MODEL

        if sam_kind == TRAINED_MODEL:
            config = replace(self.config, model=TRAINED_MODEL)
        else:
            config = replace(self.config, sam_kind=sam_kind, model="training-free")
        other = Segmenter(config, models=self.models)
        other.text_cache = self.text_cache
        return other

    def load(self) -> None:
        """Load (or fetch) both models now rather than on the first request; the proposal model first, its
        checkpoint being the file most likely to be missing. With ``precision="auto"`` this is also when the
        precision is measured (a few seconds on a CPU with bfloat16)."""
        _ = self.proposer, self.clip

    def clear_cache(self) -> None:
        for cache in self.stages.values():
            cache.clear()

    # -- cached stages ---------------------------------------------------------------------------
    def proposals(self, image: np.ndarray, options: SegmentOptions, key: str | None = None,
                  deadline: Deadline | None = None) -> tuple[TimedValue, bool]:
        key = self.proposals_key(key or image_key(image), options)
        return self.stages["proposals"].get(key, lambda: self.proposer_at(options.proposals.sam_input_size).propose(
            image, options.proposals, deadline))

    def proposals_key(self, key: str, options: SegmentOptions) -> tuple:
        """What an image's proposals depend on; a stage computed from the proposals keys on this too."""
        return key, self.config.proposal_model, self.config.random_weights, self.precision, options.proposals

    def features_stage(self, image: np.ndarray, options: SegmentOptions, key: str | None = None) -> Stage:
        clip = self.clip
        key = (key or image_key(image), clip.key, options.clip_size, options.severance, options.n_severed)
        return Stage(self.stages["dense"], key, lambda: dense_features(clip, image, options.clip_size,
                                                                       options.severance, options.n_severed))

    def features(self, image: np.ndarray, options: SegmentOptions, key: str | None = None
                 ) -> tuple[TimedValue, bool]:
        return self.features_stage(image, options, key).get()

    def crops_stage(self, image: np.ndarray, proposals: Proposals, options: SegmentOptions,
                    key: str | None = None, deadline: Deadline | None = None) -> Stage:
        clip = self.clip
        key = (key or image_key(image), clip.key, self.config.proposal_model, options.proposals, options.crop_margin)
        return Stage(self.stages["crops"], key, lambda: encode_crops(clip, image, proposals, options.crop_margin,
                                                                     options.crop_batch_size, deadline))

    # -- the call ---------------------------------------------------------------------------------
    def segment(self, image: Any, vocabulary: str | Vocabulary, method: str = "both",
                options: SegmentOptions | None = None, progress: Progress | None = None,
                timeout: float | None = None, cancelled: Callable[[], bool] | None = None,
                input_size: tuple[int, int] | None = None, **overrides: Any) -> SegmentationResult:
        """Segment `image` (path, bytes, PIL image or array) into the classes of `vocabulary`.

        method: "one-pass" (DeOP), "crop" (one CLIP pass per proposal), "both" (same proposals, timed
        side by side) or "dense" (per-pixel classification from the dense map, no SAM). Any
        ``SegmentOptions`` field, or a ``ProposalConfig`` field, may be given as a keyword override.
        timeout: seconds after which the request stops between two steps with ``SegmentTimeout``;
        cancelled: asked between steps, True stops it with ``Cancelled`` (the client went away).
        input_size: the (H, W) results are reported at, when `image` was already reduced by the caller (the
        app resizes an upload once and keeps only that); default the image's own size.
        Running out of memory (GPU or CPU) empties the caches and becomes ``DeviceOutOfMemory``: the next
        request runs normally.
        """
        *_, result = self.stream(image, vocabulary, method, options, progress, timeout, cancelled, input_size,
                                 **overrides)
        return result

    def stream(self, image: Any, vocabulary: str | Vocabulary, method: str = "both",
               options: SegmentOptions | None = None, progress: Progress | None = None,
               timeout: float | None = None, cancelled: Callable[[], bool] | None = None,
               input_size: tuple[int, int] | None = None, **overrides: Any) -> Iterator[SegmentationResult]:
        """``segment`` one method at a time: a result after each of the run's methods, the last complete
        (``pending`` empty). With "both", the one-pass answer comes before the crops are encoded; when the
        remaining methods' image stages are all cached, the complete result comes alone."""
        try:
            yield from self._stream(image, vocabulary, method, options, progress, Deadline(timeout, cancelled),
                                    input_size, overrides)
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

    def _stream(self, image: Any, vocabulary: str | Vocabulary, method: str, options: SegmentOptions | None,
                progress: Progress | None, deadline: Deadline, input_size: tuple[int, int] | None,
                overrides: dict[str, Any]) -> Iterator[SegmentationResult]:
        methods = methods_of(method, self.config.model)
        report = progress or (lambda fraction, desc: None)
        request = self._prepare(image, vocabulary, (options or self.config.options).with_overrides(**overrides),
                                deadline, report)
        if input_size is not None:
            request.input_size = (int(input_size[0]), int(input_size[1]))
        check_proportions(request.input_size)  # a short side that would round to zero at a model's input size
        if any(m.uses_proposals for m in methods):
            report(0.1, f"Proposing masks with {self.proposer_spec.title}")
            timed, hit = self.proposals(request.work, request.options, request.key, deadline)
            request.proposals = timed.value
            request.proposal_seconds = (0.0 if hit else timed.seconds, timed.seconds)
            request.reused += ["proposals"] if hit else []
        work_map = areas = None
        if request.proposals is not None:  # areas in input pixels, counted at the working size
            work_map = compact(request.proposals.segment_map)
            areas = rle.area_resized(work_map, len(request.proposals), request.input_size)
        done: dict[str, MethodResult] = {}
        similarity = None
        for i, m in enumerate(methods):
            deadline.check(m.name)
            report(0.4 + 0.5 * i / len(methods), f"Classifying ({m.name})")
            done[m.name], labels = self._run(m, request, areas)
            similarity = labels.similarity if labels.similarity is not None else similarity
            rest = methods[i + 1:]
            if rest and all(x.stage(self, request).ready for x in rest):
                continue  # the rest cost next to nothing (cached): one answer, not a frame per method
            yield self._result(request, method, done, [x.name for x in rest], work_map, similarity)

    def _prepare(self, image: Any, vocabulary: str | Vocabulary, opts: SegmentOptions, deadline: Deadline,
                 report: Progress) -> Request:
        from .clip.text import overlong_names

        original = load_image(image)
        vocab = vocabulary if isinstance(vocabulary, Vocabulary) else parse_vocabulary(vocabulary)
        warnings = list(vocab.warnings)
        if self.config.random_weights:
            warnings.insert(0, RANDOM_WEIGHTS_WARNING)
        work = resize_max_side(original, opts.max_side)
        report(0.05, "Encoding class names")
        clip = self.clip
        text_time: dict[str, float] = {}
        prompts = [p for c in vocab.classes for p in c.prompts]
        with stopwatch(text_time, "text_encoding", self.device):
            if self.config.trained:  # its learned prompt, one per name, no templates
                from .trained.run import vocabulary_text

                text, overlong = vocabulary_text(self.trained, vocab)
            else:
                text = self.text_cache.vocabulary(clip, vocab, opts.templates)
                overlong = overlong_names(clip, prompts, opts.templates)
        warnings += [f"class name too long for CLIP, truncated: {n[:60]}…" for n in overlong]
        return Request(opts, vocab, text, text_time["text_encoding"], work, image_key(work), original.shape[:2],
                       deadline, warnings)

    def _run(self, method: Method, request: Request, areas: np.ndarray | None) -> tuple[MethodResult, Labels]:
        timed, hit = method.encode(self, request)
        timings = {"proposals": request.proposal_seconds[0], "text_encoding": request.text_seconds,
                   "image_encoding": 0.0 if hit else timed.seconds}
        first = {"proposals": request.proposal_seconds[1], "text_encoding": request.text_seconds,
                 "image_encoding": timed.seconds}
        with stopwatch(timings, "classification", self.device):
            labels = method.classify(request, timed.value)
        first["classification"] = timings["classification"]
        for record in (timings, first):
            record["total"] = sum(record[s] for s in ("proposals", "image_encoding", "text_encoding",
                                                      "classification"))
        segments = []
        if labels.probs is not None:
            segments = segments_of(request.proposals, labels.probs, request.vocabulary.names,
                                   request.options.none_threshold, request.work.shape[:2], request.input_size, areas)
        reused = request.reused + (["image_encoding"] if hit else [])
        result = MethodResult(method.name, compact(labels.label_map), segments, timings, reused, first,
                              request.input_size)
        return result, labels

    def _result(self, request: Request, choice: str, done: dict[str, MethodResult], pending: list[str],
                segment_map: np.ndarray | None, similarity: np.ndarray | None) -> SegmentationResult:
        names = list(done) + pending
        out = SegmentationResult(
            classes=request.vocabulary.names, image_size=request.input_size, methods=dict(done),
            work_segment_map=segment_map, similarity=similarity, random_weights=self.config.random_weights,
            warnings=list(request.warnings), settings=self._settings(request, choice), pending=list(pending),
            comparison=tuple(names) if len(names) == 2 else None)
        if out.comparison and not pending:
            out.agreement = agreement(*(done[n] for n in out.comparison))
        return out

    def _settings(self, request: Request, method: str) -> dict[str, Any]:
        c = self.config
        h, w = request.work.shape[:2]
        return {
            "method": method, "device": str(self.device), "clip_model": c.clip_model,
            "clip_pretrained": None if c.random_weights else "deop model_final" if c.trained else c.clip_pretrained,
            "sam_kind": c.proposal_model,
            "model": c.model, "deop_checkpoint": c.deop_checkpoint if c.trained else None,
            "random_weights": c.random_weights, "precision": self.precision,
            "torch_threads": torch.get_num_threads(),
            "working_size": {"height": h, "width": w}, "options": asdict(request.options),
        }


def segments_of(proposals: Proposals, probs: torch.Tensor, names: list[str], threshold: float,
                work_shape: tuple[int, int], input_size: tuple[int, int], areas: np.ndarray) -> list[Segment]:
    """Each proposal with its label (the one rule of ``classify.labels_from``), score, top-5, and its box
    and area in input pixels."""
    k = min(5, probs.shape[1])
    top_p, top_i = (t.cpu().numpy() for t in probs.topk(k, dim=-1))
    labels, best = labels_from(probs, threshold)
    sy, sx = input_size[0] / work_shape[0], input_size[1] / work_shape[1]
    segments = []
    for i in range(len(proposals)):
        x0, y0, x1, y1 = proposals.boxes[i]
        box = (int(x0 * sx), int(y0 * sy), min(input_size[1], int(np.ceil(x1 * sx))),
               min(input_size[0], int(np.ceil(y1 * sy))))
        top5 = [(names[j], float(p)) for j, p in zip(top_i[i], top_p[i])]
        segments.append(Segment(i, box, int(areas[i]), int(labels[i]), float(best[i]), top5))
    return segments
