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
from typing import Any

import numpy as np
import torch

from ..cache import TimedValue
from ..classify import dense_features, encode_crops, pool_segments, probabilities
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

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(out.pop("params"))
        return out


# -- synthetic inputs ------------------------------------------------------------------------------------
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


@dataclass
class Bench:
    """What every measurement shares: the segmenter (models), repeats and a progress callback."""

    segmenter: Segmenter
    repeats: int = 3
    warmup: int = 1
    advance: Callable[[str], None] = lambda desc: None

    def record(self, kind: str, method: str, n: int | None, size: int | None, times: Sequence[float],
               **params: Any) -> BenchRecord:
        c = self.segmenter.config
        rss, cuda = peak_memory(self.segmenter.device)
        t = np.asarray(times, dtype=np.float64)
        stats = [None] * 5 if not len(t) else [float(v) for v in (np.median(t), t.min(), t.max(),
                                                                   *np.percentile(t, [25, 75]))]
        return BenchRecord(kind, method, n, size, *stats, repeats=len(t), device=str(self.segmenter.device),
                           torch_threads=torch.get_num_threads(), clip_model=c.clip_model, sam_model=c.sam_kind,
                           random_weights=c.random_weights, peak_rss_mb=round(rss, 1),
                           cuda_peak_mb=None if cuda is None else round(cuda, 1), params=params)

    def classification(self, sizes: Sequence[int], n_masks: Sequence[int], n_classes: int = 20,
                       crop_n_masks: Sequence[int] | None = None) -> list[BenchRecord]:
        """One-pass (dense encoding at clip_size = image size, pooling, softmax) against the crop baseline
        (batched encode_crops, softmax) on the same masks and text. Warm-up once per method and size."""
        seg = self.segmenter
        clip, opts = seg.clip, seg.config.options
        text = seg.text_cache.vocabulary(clip, Vocabulary.from_names(PRESETS["ade20k"][:n_classes]),
                                         opts.templates)
        crop_ns = n_masks if crop_n_masks is None else crop_n_masks
        out = []
        for size in sizes:
            image = synthetic_image(size)
            for method in ("one-pass", "crop"):
                for i, n in enumerate(n for n in n_masks if method == "one-pass" or n in crop_ns):
                    props = synthetic_proposals(image.shape[:2], n, seed=n)

                    def run(props: Proposals = props, method: str = method, size: int = size,
                            image: np.ndarray = image) -> None:
                        if method == "one-pass":
                            feats = dense_features(clip, image, size, opts.severance, opts.n_severed)
                            probabilities(pool_segments(feats, props), text, opts.logit_scale)
                        else:
                            emb = encode_crops(clip, image, props, opts.crop_margin, opts.crop_batch_size)
                            probabilities(emb, text, opts.logit_scale)

                    times = time_calls(run, self.repeats, self.warmup if i == 0 else 0, seg.device)
                    out.append(self.record("classify", method, len(props), size, times, n_classes=n_classes,
                                           clip_size=size, crop_batch_size=opts.crop_batch_size))
                    self.advance(f"classify {method} {size}px N={n}")
        return out

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
        vocabs = {n: Vocabulary.from_names(PRESETS["ade20k"][:n]) for n in class_counts}
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
        vocab = Vocabulary.from_names(PRESETS["ade20k"][:20])
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
                                       clip_size=opts.clip_size, n_classes=len(vocab), **stages))
                self.advance(f"end to end {preset} pps={opts.proposals.points_per_side} {method}")
        return out

    def proposals_vs_stock(self, points_per_side: int = 10, size: int = E2E_IMAGE) -> list[BenchRecord]:
        """Our proposal stage (limit and overlap resolution included) against the model family's own
        automatic mask generator on the model as its package ships it (SAM: its original attention), at
        equal settings (the demo preset at ``points_per_side``, the encoder at 1024 px) on the same image."""
        seg = self.segmenter
        config = replace(PROPOSAL_PRESETS["demo"], points_per_side=points_per_side)
        image = synthetic_image(size)
        proposer = seg.proposer_at(config.sam_input_size)

        def stock() -> None:
            with proposer.spec.family.stock_model(proposer.model) as model, torch.inference_mode():
                proposer.spec.family.stock_generator(model, config).generate(image)

        out = []
        for method, fn in (("stock", stock), ("deop", lambda: proposer.propose(image, config))):
            times = time_calls(fn, self.repeats, 0, seg.device)
            out.append(self.record("proposals", method, None, size, times, points_per_side=points_per_side,
                                   points_per_batch=config.points_per_batch))
            self.advance(f"proposals {method} pps={points_per_side}")
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
    records = bench.classification(p["sizes"], p["n_masks"], crop_n_masks=p["crop_n_masks"])
    if p["e2e"]:
        records += bench.end_to_end(p["e2e"], p["e2e_methods"])
    records += bench.requery(templates=p["templates"])
    records.append(bench.memory(records))
    if p.get("stock_points"):  # after the memory record: stock SAM's attention peaks 1-2 GB higher than ours
        records += bench.proposals_vs_stock(p["stock_points"])
    if p.get("backends"):  # after the memory record too: the target counts the default models only
        records += bench.backends(p["backends"], p["e2e"])
    flat = [r.to_dict() for r in records]
    return flat + [targets_record(evaluate_targets(flat), flat[0])]
