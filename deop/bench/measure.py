"""What ``python -m deop bench`` measures: what DeOP's one CLIP pass buys over the crop baseline, on this
device.

The classification stage is timed on synthetic disjoint masks, so that N is exactly what was asked for
whatever SAM would find; end-to-end runs use the real Segmenter with SAM. Every number is a median over
repeats after a warm-up, with its spread, and the issue's targets are checked from the records alone so
that a saved JSON can be re-judged later.
"""

from __future__ import annotations

import math
import resource
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cache import TimedValue
from ..classify import crop_batch_size, dense_features, encode_crops, pool_segments, probabilities
from ..clip.text import TextEmbeddingCache
from ..config import PROPOSAL_PRESETS, SegmenterConfig
from ..images import nearest_indices
from ..pipeline import Segmenter
from ..presets import PRESETS
from ..proposers import Proposals, segment_boxes
from ..timing import stopwatch
from ..vocabulary import Vocabulary
from .report import evaluate_targets, targets_record

E2E_IMAGE = 1024  # long side of the end-to-end image: the default max_side, so SAM sees it at full size
REQUERY_MASKS = 100
ASSETS = Path(__file__).resolve().parent.parent.parent / "assets"


@dataclass
class BenchRecord:
    """One measurement. ``params`` holds what only some kinds have (classes, preset, ...); it is flattened
    into the JSON record so that every record is one flat object."""

    kind: str  # "classify", "requery", "e2e", "proposals", "memory"
    method: str
    n_masks: int | None
    image_size: int | None
    seconds_median: float | None
    seconds_min: float | None
    seconds_max: float | None
    seconds_q1: float | None
    seconds_q3: float | None
    repeats: int
    device: str
    torch_threads: int
    clip_model: str
    sam_model: str
    random_weights: bool
    peak_rss_mb: float
    cuda_peak_mb: float | None
    params: dict[str, Any] = field(default_factory=dict)
    precision: str = "float32"  # both models' (``deop.precision``); stock generators always run float32

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(out.pop("params"))
        return out


# -- synthetic inputs ------------------------------------------------------------------------------------
def bench_vocabulary(n_classes: int = 20) -> Vocabulary:
    """The classes every timing scores against: the first `n_classes` of ADE20K's."""
    return Vocabulary.from_names(PRESETS["ade20k"][:n_classes])


def synthetic_image(long_side: int, seed: int = 0) -> np.ndarray:
    """A 4:3 RGB image of smooth colour blobs; content does not change any cost measured here."""
    rng = np.random.default_rng(seed)
    h, w = round(long_side * 3 / 4), long_side
    small = rng.integers(0, 256, size=(6, 8, 3)).astype(np.float32)
    rows = np.linspace(0, 5, h)
    cols = np.linspace(0, 7, w)
    r0, c0 = np.floor(rows).astype(int).clip(0, 4), np.floor(cols).astype(int).clip(0, 6)
    fr, fc = (rows - r0)[:, None, None], (cols - c0)[None, :, None]
    img = (small[r0][:, c0] * (1 - fr) * (1 - fc) + small[r0 + 1][:, c0] * fr * (1 - fc)
           + small[r0][:, c0 + 1] * (1 - fr) * fc + small[r0 + 1][:, c0 + 1] * fr * fc)
    return img.clip(0, 255).astype(np.uint8)


def synthetic_proposals(shape: tuple[int, int], n: int, seed: int = 0, grid: int = 64) -> Proposals:
    """Exactly `n` disjoint segments of varied sizes covering the image (a weighted Voronoi partition).

    Seeds sit in distinct cells of a coarse grid and each cell goes to the seed with the least
    distance / weight; a seed always wins its own cell (distance 0), so none is empty. Log-normal
    weights give a few large regions and many small ones, as SAM's masks do.
    """
    h, w = shape
    gh, gw = max(grid, math.isqrt(n) + 1), max(grid, math.isqrt(n) + 1)
    rng = np.random.default_rng(seed)
    cells = rng.choice(gh * gw, size=n, replace=False)
    sy, sx = cells // gw, cells % gw
    weight = rng.lognormal(0.0, 0.6, size=n)
    yy, xx = np.mgrid[:gh, :gw]
    dist = np.hypot(yy[None] - sy[:, None, None], xx[None] - sx[:, None, None]) / weight[:, None, None]
    coarse = dist.argmin(axis=0).astype(np.int32)
    segment_map = coarse[nearest_indices(gh, h)[:, None], nearest_indices(gw, w)[None, :]]
    present = np.unique(segment_map)  # a seed's cell may fall between sampled pixels on a tiny image
    remap = np.full(n, -1, dtype=np.int32)
    remap[present] = np.arange(len(present), dtype=np.int32)
    segment_map = remap[segment_map]
    boxes, areas = segment_boxes(segment_map, len(present))
    return Proposals(segment_map, np.ones(len(present), dtype=np.float32), boxes, areas, raw_count=n)


def photo_image(long_side: int) -> np.ndarray:
    """assets/coffee.jpg (a real photo: SAM's masks on it have real shapes) resized to `long_side`."""
    from PIL import Image

    from ..images import load_image

    photo = Image.fromarray(load_image(ASSETS / "coffee.jpg"))
    scale = long_side / max(photo.size)
    return np.asarray(photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.Resampling.BICUBIC))


def _same_records(ours: list[dict], stock: list[dict]) -> bool:
    return len(ours) == len(stock) and all(
        np.array_equal(a["segmentation"], b["segmentation"]) and a["predicted_iou"] == b["predicted_iou"]
        and a["stability_score"] == b["stability_score"] and a["bbox"] == b["bbox"] for a, b in zip(ours, stock))


# -- measuring -------------------------------------------------------------------------------------------
def peak_memory(device: torch.device) -> tuple[float, float | None]:
    """(peak process RSS in MiB, peak CUDA allocation in MiB or None): the larger of psutil's current RSS
    and the kernel's high-water mark (ru_maxrss is KiB on Linux, bytes on macOS)."""
    import psutil

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    maxrss_mb = maxrss / 2**20 if sys.platform == "darwin" else maxrss / 2**10
    rss_mb = psutil.Process().memory_info().rss / 2**20
    cuda = None
    if device.type == "cuda":
        cuda = torch.cuda.max_memory_allocated(device) / 2**20
    return max(maxrss_mb, rss_mb), cuda


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    times: list[float] = []
    for _ in range(repeats):
        record: dict[str, float] = {}
        with stopwatch(record, "t", device):
            fn()
        times.append(record["t"])
    return times


def forced_options(seg: Segmenter, masks: int, **overrides: Any) -> Any:
    """The fast preset with about `masks` segments on any weights: thresholds 0, NMS off, at most `masks`
    masks (a random SAM keeps about one at the real thresholds), as ``bench-app --masks`` asks the app."""
    return seg.config.options.with_overrides(proposals=PROPOSAL_PRESETS["fast"], pred_iou_thresh=0.0,
                                             stability_score_thresh=0.0, box_nms_thresh=1.0, max_masks=masks,
                                             **overrides)


@dataclass
class Bench:
    """What every measurement shares: the segmenter (models), repeats and a progress callback."""

    segmenter: Segmenter
    repeats: int = 3
    warmup: int = 1
    advance: Callable[[str], None] = lambda desc: None

    def record(self, kind: str, method: str, n: int | None, size: int | None, times: Sequence[float],
               precision: str | None = None, **params: Any) -> BenchRecord:
        c = self.segmenter.config
        rss, cuda = peak_memory(self.segmenter.device)
        t = np.asarray(times, dtype=np.float64)
        stats = [None] * 5 if not len(t) else [float(v) for v in (np.median(t), t.min(), t.max(),
                                                                   *np.percentile(t, [25, 75]))]
        return BenchRecord(kind, method, n, size, *stats, repeats=len(t), device=str(self.segmenter.device),
                           torch_threads=torch.get_num_threads(), clip_model=c.clip_model, sam_model=c.sam_kind,
                           random_weights=c.random_weights, peak_rss_mb=round(rss, 1),
                           cuda_peak_mb=None if cuda is None else round(cuda, 1), params=params,
                           precision=precision or self.segmenter.precision)

    def _crop_batch(self) -> int:
        return crop_batch_size(self.segmenter.config.options.crop_batch_size, self.segmenter.device)

    def _text(self, clip: Any, n_classes: int) -> torch.Tensor:
        opts = self.segmenter.config.options
        return self.segmenter.text_cache.vocabulary(clip, bench_vocabulary(n_classes),
                                                    opts.templates)

    def _classify_call(self, clip: Any, text: torch.Tensor, method: str, image: np.ndarray, size: int,
                       props: Proposals) -> Callable[[], None]:
        """One classification of `props` by `method`, what a timed call runs: the one pass (dense encoding at
        clip_size = image size, pooling, softmax) or the crop baseline (batched encode_crops, softmax)."""
        opts = self.segmenter.config.options

        def run() -> None:
            if method == "one-pass":
                feats = dense_features(clip, image, size, opts.severance, opts.n_severed)
                probabilities(pool_segments(feats, props), text, opts.logit_scale)
            else:
                probabilities(encode_crops(clip, image, props, opts.crop_margin, opts.crop_batch_size), text,
                              opts.logit_scale)

        return run

    def classification(self, sizes: Sequence[int], n_masks: Sequence[int], n_classes: int = 20,
                       crop_n_masks: Sequence[int] | None = None) -> list[BenchRecord]:
        """One-pass against the crop baseline on the same masks and text. Warm-up once per method and size."""
        seg = self.segmenter
        clip = seg.clip
        text = self._text(clip, n_classes)
        crop_ns = n_masks if crop_n_masks is None else crop_n_masks
        out = []
        for size in sizes:
            image = synthetic_image(size)
            for method in ("one-pass", "crop"):
                for i, n in enumerate(n for n in n_masks if method == "one-pass" or n in crop_ns):
                    props = synthetic_proposals(image.shape[:2], n, seed=n)
                    run = self._classify_call(clip, text, method, image, size, props)
                    times = time_calls(run, self.repeats, self.warmup if i == 0 else 0, seg.device)
                    out.append(self.record("classify", method, len(props), size, times, n_classes=n_classes,
                                           clip_size=size, crop_batch_size=self._crop_batch()))
                    self.advance(f"classify {method} {size}px N={n}")
        return out

    def classification_in_turn(self, sizes: Sequence[int], n_masks: Sequence[int], precisions: Sequence[str],
                               n_classes: int = 20) -> list[BenchRecord]:
        """The classification stage at several precisions, their calls taken in turn (each round runs every
        precision's one pass and crops once) in one process on the same weights, image and masks: the
        one-pass/crop ratios of two precisions differ by a few per cent, less than this machine drifts
        between two runs of the bench, so only calls side by side can compare them."""
        seg = self.segmenter
        clips = {p: replace(seg.clip, precision=p) for p in precisions}
        texts = {p: self._text(clip, n_classes) for p, clip in clips.items()}
        out = []
        for size in sizes:
            image = synthetic_image(size)
            for n in n_masks:
                props = synthetic_proposals(image.shape[:2], n, seed=n)
                calls = {(p, m): self._classify_call(clips[p], texts[p], m, image, size, props)
                         for p in precisions for m in ("one-pass", "crop")}
                for (p, method), t in self._in_turn(calls).items():
                    out.append(self.record("classify", method, n, size, t, precision=p, n_classes=n_classes,
                                           clip_size=size, crop_batch_size=self._crop_batch(), in_turn=True))
                self.advance(f"classify in turn {size}px N={n}")
        return out

    def _in_turn(self, calls: dict[Any, Callable[[], None]]) -> dict[Any, list[float]]:
        """Seconds of each call over ``repeats`` rounds that run every call once, in order, after
        ``warmup`` such rounds."""
        times: dict[Any, list[float]] = {key: [] for key in calls}
        for round_ in range(self.warmup + self.repeats):
            for key, call in calls.items():
                seconds = time_calls(call, 1, 0, self.segmenter.device)
                if round_ >= self.warmup:
                    times[key] += seconds
        return times

    def requery(self, class_counts: Sequence[int] = (20, 150), templates: str | None = None) -> list[BenchRecord]:
        """A new vocabulary or threshold on an image whose proposals and features are cached.

        "cached": every name was encoded before, so only pooling, softmax and the label maps run;
        "new": a fresh text cache, so every name is encoded first. The 150 names are encoded once.
        """
        base = self.segmenter
        opts = base.config.options if templates is None else replace(base.config.options, templates=templates)
        image = synthetic_image(min(E2E_IMAGE, opts.max_side))
        seg = _FixedProposals(replace(base.config, options=opts), synthetic_proposals(image.shape[:2],
                                                                                      REQUERY_MASKS))
        vocabs = {n: bench_vocabulary(n) for n in class_counts}
        out = []
        for n in class_counts:
            seg.text_cache = TextEmbeddingCache()
            new = time_calls(lambda n=n: seg.segment(image, vocabs[n], "one-pass"), 1, 0, seg.device)
            cached = time_calls(lambda n=n: seg.segment(image, vocabs[n], "one-pass", none_threshold=0.01),
                                self.repeats, self.warmup, seg.device)
            for text, times in (("new", new), ("cached", cached)):
                out.append(self.record("requery", "one-pass", REQUERY_MASKS, image.shape[1], times,
                                       n_classes=n, text=text, templates=opts.templates, clip_size=opts.clip_size))
                self.advance(f"re-query {n} classes, text {text}")
        return out

    def end_to_end(self, configs: Sequence[tuple[str, int | None]], methods: Sequence[str] = ("one-pass", "both"),
                   repeats: int = 1) -> list[BenchRecord]:
        """Full ``Segmenter.segment`` with SAM, caches emptied before every call; text is encoded beforehand
        (the app caches it). No extra warm-up: the classification runs before it warmed CLIP, and a SAM
        warm-up would cost a whole encoder pass."""
        seg = self.segmenter
        image = synthetic_image(E2E_IMAGE)
        vocab = bench_vocabulary()
        seg.text_cache.vocabulary(seg.clip, vocab, seg.config.options.templates)
        out = []
        for preset, points in configs:
            overrides = {"points_per_side": points} if points else {}
            opts = seg.config.options.with_overrides(proposals=PROPOSAL_PRESETS[preset], **overrides)
            for method in methods:
                results = []

                def run(opts: Any = opts, method: str = method, results: list = results) -> None:
                    seg.clear_cache()
                    results.append(seg.segment(image, vocab, method, options=opts))

                times = time_calls(run, repeats, 0, seg.device)
                last = results[-1]
                n = len(next(iter(last.methods.values())).segments)
                stages = {f"{m}_seconds": round(r.first_run_timings["total"], 4) for m, r in last.methods.items()}
                out.append(self.record("e2e", method, n, max(image.shape[:2]), times, preset=preset,
                                       points_per_side=opts.proposals.points_per_side, preset_default=not points,
                                       max_side=opts.max_side,
                                       clip_size=opts.clip_size, n_classes=len(vocab),
                                       crop_batch_size=self._crop_batch(), **stages))
                self.advance(f"end to end {preset} pps={opts.proposals.points_per_side} {method}")
        return out

    def proposals_at_counts(self, presets: Sequence[str] = ("fast", "demo"),
                            targets: Sequence[int] = (1, 30, 100, 300), image: np.ndarray | None = None,
                            points_per_side: int | None = None) -> list[BenchRecord]:
        """Our generator against the family's stock one at controlled numbers of masks passing the filters,
        as real weights give (a random SAM keeps about one at the default thresholds, which hides every
        cost that grows with the masks). NMS is off and the stability threshold 0; the predicted-IoU
        threshold is set between the model's own k-th and (k+1)-th score on this image, so that k masks
        pass (all of them for a k beyond what the point grid gives). Each record carries the exact count,
        the network time (encoder and decoder, the same calls in both) and whether the masks were equal."""
        seg = self.segmenter
        name = "coffee.jpg" if image is None else "given"
        image = photo_image(640) if image is None else image
        out = []
        for preset in presets:
            base = replace(PROPOSAL_PRESETS[preset], stability_score_thresh=0.0, box_nms_thresh=1.0, max_masks=0)
            if points_per_side:
                base = replace(base, points_per_side=points_per_side)
            proposer = seg.proposer_at(base.sam_input_size)
            ious = np.sort(proposer.masks(image, replace(base, pred_iou_thresh=0.0)).predicted_iou)[::-1]
            for target in targets:
                thresh = 0.0 if target >= len(ious) else float((ious[target - 1] + ious[target]) / 2)
                config = replace(base, pred_iou_thresh=thresh)
                times, masks, same, network = self._ours_and_stock(proposer, image, config)
                for method in ("stock", "deop"):
                    out.append(self.record("proposals", method, len(masks), max(image.shape[:2]), times[method],
                                           preset=preset, points_per_side=config.points_per_side,
                                           sam_input_size=proposer.input_size, target_masks=target,
                                           pred_iou_thresh=round(thresh, 6), identical=same, image=name,
                                           network_seconds=round(network, 4)))
                self.advance(f"proposals {preset} {len(masks)} masks")
        return out

    def _ours_and_stock(self, proposer: Any, image: np.ndarray, config: Any) -> tuple[dict, Any, bool, float]:
        """Each generator on the same image and settings, alternately, ``repeats`` times while stock takes
        under 10 s (once otherwise: the demo preset's stock run takes 40 s here); our masks; whether they
        agree; the median network time of our runs."""
        family, results, network = proposer.spec.family, {}, []

        def ours() -> None:
            results["deop"] = proposer.masks(image, config)
            network.append(results["deop"].network_seconds)

        def stock() -> None:
            with family.stock_model(proposer.model) as model, torch.inference_mode():
                results["stock"] = family.stock_generator(model, config).generate(image)

        device = self.segmenter.device
        times: dict[str, list[float]] = {"stock": [], "deop": []}
        for _ in range(max(1, self.repeats)):
            times["stock"] += time_calls(stock, 1, 0, device)
            times["deop"] += time_calls(ours, 1, 0, device)
            if times["stock"][0] >= 10.0:
                break
        same = _same_records(results["deop"].to_records(), results["stock"])
        return times, results["deop"], same, float(np.median(network))

    def at_forced_masks(self, candidates: Sequence[tuple[str, int]], masks: int = 30,
                        methods: Sequence[str] = ("one-pass", "both"), image: np.ndarray | None = None
                        ) -> list[BenchRecord]:
        """End to end on the 640 px photo with about `masks` segments (thresholds 0, NMS off, at most
        `masks` masks, as ``bench-app --masks`` asks the app) for each (proposal model, encoder input) of
        `candidates`, on the fast preset's points: what the CPU default should be chosen from. Caches are
        emptied before every call; the text is encoded beforehand (the app caches it)."""
        name = "coffee.jpg" if image is None else "given"
        image = photo_image(640) if image is None else image
        vocab = bench_vocabulary()
        out = []
        for kind, size in candidates:
            seg = self.segmenter if kind == self.segmenter.config.sam_kind else self.segmenter.with_proposal_model(kind)
            seg.text_cache.vocabulary(seg.clip, vocab, seg.config.options.templates)
            opts = forced_options(seg, masks, sam_input_size=size)
            for i, method in enumerate(methods):
                results = []

                def run(seg: Segmenter = seg, opts: Any = opts, method: str = method, results: list = results) -> None:
                    seg.clear_cache()
                    results.append(seg.segment(image, vocab, method, options=opts))

                # A model's first call pays one-time costs (allocations, kernel selection): not its latency.
                times = time_calls(run, 1, 1 if i == 0 else 0, seg.device)
                last = results[-1]
                n = len(next(iter(last.methods.values())).segments)
                stages = {f"{m}_seconds": round(r.first_run_timings["total"], 4) for m, r in last.methods.items()}
                first = next(iter(last.methods.values())).timings
                record = self.record("e2e_masks", method, n, max(image.shape[:2]), times, forced_masks=masks,
                                     sam_input_size=seg.proposer_spec.input_size_for(size), image=name,
                                     proposals_seconds=round(first["proposals"], 4), n_classes=len(vocab),
                                     crop_batch_size=self._crop_batch(), **stages)
                record.sam_model = kind
                out.append(record)
                self.advance(f"{kind}@{size} {masks} masks {method}")
        return out

    def clicks(self, candidates: Sequence[tuple[str, int]], n: int = 10, image: np.ndarray | None = None
               ) -> list[BenchRecord]:
        """A click that adds a segment on a segmented image (the fast preset): SAM's decoder on the kept
        embedding, pooling and scoring from the cached dense map; the server's time per click over `n`
        points spread over the image, for each (proposal model, encoder input)."""
        from ..explore import add_segment

        name = "coffee.jpg" if image is None else "given"
        image = photo_image(640) if image is None else image
        vocab = bench_vocabulary()
        h, w = image.shape[:2]
        rng = np.random.default_rng(0)
        points = [(float(x), float(y), True) for x, y in zip(rng.integers(0, w, n), rng.integers(0, h, n))]
        out = []
        for kind, size in candidates:
            seg = self.segmenter if kind == self.segmenter.config.sam_kind else self.segmenter.with_proposal_model(kind)
            opts = seg.config.options.with_overrides(proposals=PROPOSAL_PRESETS["fast"], sam_input_size=size)
            seg.segment(image, vocab, "one-pass", options=opts)  # what the app has done before any click
            add_segment(seg, image, vocab, [points[0]], opts)  # a warm-up
            seconds = [add_segment(seg, image, vocab, [p], opts).seconds for p in points]
            record = self.record("click", "add_segment", None, max(image.shape[:2]), seconds, image=name,
                                 sam_input_size=seg.proposer_spec.input_size_for(size), clicks=n)
            record.sam_model = kind
            out.append(record)
            self.advance(f"clicks {kind}@{size}")
        return out

    def variants(self, image: np.ndarray | None = None, masks: int = 30) -> list[BenchRecord]:
        """The compare view's cost at about `masks` segments: each severance variant's dense pass on the
        shared proposals (its first look), then the whole view again from the caches."""
        from ..explore import compare_variants

        name = "coffee.jpg" if image is None else "given"
        image = photo_image(640) if image is None else image
        seg = self.segmenter
        vocab = bench_vocabulary()
        opts = forced_options(seg, masks)
        seg.segment(image, vocab, "one-pass", options=opts)
        out = []
        for run in compare_variants(seg, image, vocab, opts):
            out.append(self.record("variants", run.variant, len(run.method.segments), max(image.shape[:2]),
                                   [run.clip_seconds], image=name, reused=run.reused,
                                   clip_size=opts.clip_size, forced_masks=masks))
        again = time_calls(lambda: list(compare_variants(seg, image, vocab, opts)), 1, 0, seg.device)
        out.append(self.record("variants", "all cached", None, max(image.shape[:2]), again, image=name))
        self.advance("compare variants")
        return out

    def backends(self, kinds: Sequence[str], configs: Sequence[tuple[str, int | None]]) -> list[BenchRecord]:
        """End to end (one-pass) with other proposal models, e.g. SAM 2.1, at the main model's settings, on
        the same image, CLIP and text: records differ from the main model's only in ``sam_model``."""
        out = []
        for kind in kinds:
            other = self.segmenter.with_proposal_model(kind)
            out += replace(self, segmenter=other).end_to_end(configs, ("one-pass",))
        return out

    def memory(self, records: Sequence[BenchRecord]) -> BenchRecord:
        """The run's peak memory; it counts for the 1024 px target only if SAM and CLIP ran on a 1024 px image
        (an end-to-end record) or CLIP encoded one densely."""
        largest = max((r.image_size or 0 for r in records if r.kind in ("e2e", "classify")), default=0)
        return self.record("memory", "all", None, largest, [], max_image_size=largest,
                           sam_ran=any(r.kind == "e2e" for r in records))


class _FixedProposals(Segmenter):
    """A Segmenter whose proposal stage returns given masks: re-query cost with N known, without SAM."""

    def __init__(self, config: SegmenterConfig, proposals: Proposals) -> None:
        super().__init__(config)
        self.fixed = proposals

    def proposals(self, image: np.ndarray, options: Any, key: str | None = None, deadline: Any = None
                  ) -> tuple[TimedValue, bool]:
        return TimedValue(self.fixed, 0.0), True


def run_bench(bench: Bench, p: dict[str, Any]) -> list[dict]:
    if p.get("only_proposals"):
        records = [*bench.proposals_at_counts(**p["proposal_counts"]), bench.memory([])]
        flat = [r.to_dict() for r in records]
        return flat + [targets_record(evaluate_targets(flat), flat[0])]
    if p.get("precisions"):
        records = bench.classification_in_turn(p["sizes"], p["n_masks"], p["precisions"])
        flat = [r.to_dict() for r in [*records, bench.memory(records)]]
        return flat + [targets_record(evaluate_targets(flat), flat[0])]
    records = bench.classification(p["sizes"], p["n_masks"], crop_n_masks=p["crop_n_masks"])
    if p["e2e"]:
        records += bench.end_to_end(p["e2e"], p["e2e_methods"])
    records += bench.requery(templates=p["templates"])
    records.append(bench.memory(records))
    if p.get("proposal_counts"):  # after the memory record: stock SAM's attention peaks 1-2 GB higher than ours
        records += bench.proposals_at_counts(**p["proposal_counts"])
    if p.get("candidates"):
        records += bench.at_forced_masks(p["candidates"], p["forced_masks"], p["e2e_methods"])
    if p.get("click_models"):
        records += bench.clicks(p["click_models"])
        records += bench.variants(masks=p["forced_masks"])
    if p.get("backends"):  # after the memory record too: the target counts the default models only
        records += bench.backends(p["backends"], p["e2e"])
    flat = [r.to_dict() for r in records]
    return flat + [targets_record(evaluate_targets(flat), flat[0])]
