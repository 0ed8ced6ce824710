"""What a public server needs besides the pipeline, without Gradio: bounded per-session state, temporary
files cleaned by age and total size, strict checks of every request input, and an up-front estimate of a
request's cost so that one that cannot fit its time limit is refused before it holds the queue.

A public Space meets thousands of sessions, 49-megapixel uploads, clients that disconnect mid-request
and API calls with wrong types; each of these gets a bounded cost or a message naming the input here.
"""

from __future__ import annotations

import math
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import APP_OPTIONS, Option, request_options
from .errors import OptionError, TooExpensive
from .methods import METHOD_CHOICES, methods_of
from .result import SegmentationResult


# -- sessions ----------------------------------------------------------------------------------------------
@dataclass
class SessionView:
    """One browser session's last answer, as its views need it: everything at the working size (the
    long side at most ``max_side``), never the full-resolution upload, and nothing that can be drawn again
    from these (the inspector's picture is). ``request`` holds the inputs that produced it, so that an edit
    can re-run from the caches."""

    image: np.ndarray
    result: SegmentationResult
    request: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # views added later (variants, added segments)

    def nbytes(self) -> int:
        arrays = [self.image, self.result.work_segment_map, self.result.similarity,
                  *(m.work_label_map for m in self.result.methods.values())]
        return int(sum(a.nbytes for a in arrays if a is not None)) + sum(_nbytes(v) for v in self.extra.values())


def _nbytes(value: Any) -> int:
    """An array's bytes, a list's items' (the added segments, each with its mask and logits), else 0."""
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    size = getattr(value, "nbytes", 0)
    return size if isinstance(size, int) else 0


class SessionStore:
    """Session views by an opaque token (what a browser's ``gr.State`` holds), bounded in total bytes and
    in age: the least recently used go first when a new one does not fit, and any older than
    ``ttl_seconds`` are dropped. A session whose view was dropped is told to segment again."""

    def __init__(self, max_bytes: int = 512 * 2**20, ttl_seconds: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._items: OrderedDict[str, tuple[SessionView, int, float]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, view: SessionView, token: str | None = None) -> str:
        """Store `view` (replacing the session's previous one) and return its token."""
        token = token or secrets.token_urlsafe(12)
        size = view.nbytes()
        with self._lock:
            self._drop(token)
            self._expire()
            while self._items and self._bytes + size > self.max_bytes:
                self._drop(next(iter(self._items)))
            self._items[token] = (view, size, self._clock())
            self._bytes += size
        return token

    def get(self, token: Any) -> SessionView | None:
        if not isinstance(token, str):
            return None
        with self._lock:
            self._expire()
            item = self._items.get(token)
            if item is None:
                return None
            self._items.move_to_end(token)
            self._items[token] = (item[0], item[1], self._clock())
            return item[0]

    def drop(self, token: Any) -> None:
        with self._lock:
            self._drop(token)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def _drop(self, token: Any) -> None:
        item = self._items.pop(token, None) if isinstance(token, str) else None
        if item is not None:
            self._bytes -= item[1]

    def _expire(self) -> None:
        now = self._clock()
        for token in [t for t, (_, _, seen) in self._items.items() if now - seen > self.ttl_seconds]:
            self._drop(token)


def release_memory() -> None:
    """Hand freed memory back to the operating system after a request: glibc keeps the arenas of the
    server's worker threads at their high-water mark (a 49-megapixel upload decodes to 147 MB), so a
    long-running server's RSS would otherwise only grow. A no-op where there is no glibc."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class MemoryRelease:
    """``release_memory`` after each request, its garbage collection made cheap: a full collection walks
    every object the process holds (the models, the modules, the web server: half a million), which took
    0.3-0.4 s of every answer's wall time. After the first request, what is still alive is moved out of
    the collector's sight (``gc.freeze``): later collections walk only what requests have made since, in
    milliseconds. (Frozen objects are still freed when their last reference goes; only a cycle among them
    that becomes garbage later would stay, and the long-lived objects of a server form none that matter.)"""

    def __init__(self, release: Callable[[], None] = release_memory) -> None:
        self._release = release
        self.frozen = False

    def __call__(self) -> None:
        import gc

        self._release()
        if not self.frozen:
            gc.freeze()
            self.frozen = True


# -- temporary files ---------------------------------------------------------------------------------------
class Janitor:
    """Deletes files under `roots` older than `max_age` seconds, then the oldest ones while their total is
    over `max_bytes` (never one younger than `min_age`, which a client may still be downloading), and
    folders left empty. Files in `keep` (the example images' cached copies) are never touched."""

    def __init__(self, roots: Iterable[Path], max_age: float = 3600.0, max_bytes: int = 2 * 2**30,
                 min_age: float = 120.0, keep: Iterable[Path] = (), every: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.roots = [Path(r) for r in roots]
        self.max_age, self.max_bytes, self.min_age, self.every = max_age, max_bytes, min_age, every
        self.keep = {Path(p).resolve() for p in keep}
        self._clock = clock
        self._last = -math.inf
        self._lock = threading.Lock()

    def protect(self, paths: Iterable[Path]) -> None:
        """Never delete these (the example images' copies in Gradio's cache, which the page links to)."""
        self.keep |= {Path(p).resolve() for p in paths}

    def maybe_sweep(self) -> dict[str, int] | None:
        """``sweep`` at most once per `every` seconds (called on each request)."""
        if self._clock() - self._last < self.every:
            return None
        return self.sweep()

    def sweep(self) -> dict[str, int]:
        """One pass; returns how many files and bytes were removed and what is left."""
        with self._lock:
            now = self._last = self._clock()
            files, folders = [], []
            for root in self.roots:
                # os.walk does not follow links to folders (Path.rglob does before Python 3.13): nothing
                # outside the roots is ever deleted
                for top, dirs, names in os.walk(root, followlinks=False):
                    folders += [Path(top) / d for d in dirs]
                    files += [Path(top) / n for n in names]
            found, files = files, []
            for path in found:
                try:
                    if path.is_file() and not path.is_symlink() and path.resolve() not in self.keep:
                        st = path.stat()
                        files.append((st.st_mtime, st.st_size, path))
                except OSError:  # removed meanwhile
                    continue
            files.sort()
            total = sum(size for _, size, _ in files)
            removed = freed = 0
            for mtime, size, path in files:
                age = now - mtime
                if age > self.max_age or (total > self.max_bytes and age > self.min_age):
                    try:
                        path.unlink()
                    except OSError:
                        continue
                    removed, freed, total = removed + 1, freed + size, total - size
            for folder in sorted((f for f in folders if not f.is_symlink()), key=lambda p: -len(p.parts)):
                try:
                    folder.rmdir()  # only succeeds when empty
                except OSError:
                    pass
            return {"removed": removed, "freed_bytes": freed, "left_bytes": total}


# -- request checks ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RequestInput:
    """One input of the app's /segment endpoint, in API order."""

    name: str
    check: Callable[[Any], Any]
    default: Any


def _text(name: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise OptionError(f"{name} must be a text (the classes, e.g. 'cat, dog'), got {_shown(value)}")
        return value
    return check


def _choice(name: str, choices: Sequence[str]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            raise OptionError(f"{name} must be one of {', '.join(choices)}; got {_shown(value)}")
        return value
    return check


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def request_inputs(defaults: dict[str, Any], proposal_models: Sequence[str]) -> list[RequestInput]:
    """The /segment inputs after the image, in API order, each with its check (an app option's widget
    range included) and its default (what a call that leaves it out gets)."""
    options = request_options()
    inputs = [RequestInput("vocabulary", _text("vocabulary"), defaults.get("vocabulary", "")),
              RequestInput("method", _choice("method", METHOD_CHOICES), defaults.get("method", "both"))]
    inputs += [RequestInput(name, _option_check(options[name]), defaults[name]) for name in APP_OPTIONS]
    inputs.append(RequestInput("proposal_model", _choice("proposal_model", list(proposal_models)),
                               defaults.get("proposal_model", proposal_models[0])))
    return inputs


def _option_check(option: Option) -> Callable[[Any], Any]:
    return lambda value: option.check(value, app=True)


# -- cost ----------------------------------------------------------------------------------------------------
@dataclass
class UnitCosts:
    """Seconds of the expensive steps on this device, measured once (``calibrate``) or from the first
    requests: one SAM encoder pass and one batch of point prompts at the calibration input size and a
    1024 x 768 image, one dense CLIP pass at 448 px, one batch of crops, one class name's prompts."""

    sam_input_size: int
    sam_encoder: float
    sam_batch: float
    points_per_batch: int
    clip_448: float
    crop_batch: float
    crop_batch_size: int
    text_name: float


@dataclass(frozen=True)
class Estimate:
    seconds: float
    parts: dict[str, float]

    def advice(self) -> str:
        hints = {"proposals": "SAM points per side", "features": "CLIP input long side",
                 "crops": "Max masks (or the one-pass method alone)", "text": "fewer classes",
                 "image": "Max image side"}
        order = sorted(self.parts, key=lambda k: -self.parts[k])
        return ", ".join(hints[k] for k in order[:2] if self.parts[k] > 0)


def estimate(costs: UnitCosts, work_size: tuple[int, int], values: dict[str, Any], new_names: int) -> Estimate:
    """A request's seconds from its settings: the encoder scales with its input area (SAM's global
    attention makes it faster than linear), point batches with their count and with the image they are
    upsampled to, the dense pass with its token count to the 1.45 (measured: 448 → 1024 px costs 10x), crops
    with their batches. Deliberately simple: it only has to tell a request that fits from one that cannot."""
    p = values
    size = p.get("sam_input_size", costs.sam_input_size)
    area = (size / costs.sam_input_size) ** 2
    layers = sum(4 ** i for i in range(p.get("crop_n_layers", 0) + 1))
    batches = math.ceil(p["points_per_side"] ** 2 / costs.points_per_batch) * layers
    pixels = work_size[0] * work_size[1] / (1024 * 768)
    proposals = costs.sam_encoder * area ** 1.2 * layers + batches * costs.sam_batch * area * (0.5 + 0.5 * pixels)
    uses = {m.name for m in methods_of(p["method"])}
    if not {"one-pass", "crop"} & uses:
        proposals = 0.0
    tokens = (p["clip_size"] / 448) ** 2
    features = costs.clip_448 * tokens ** 1.45 if uses & {"one-pass", "dense"} else 0.0
    crops = math.ceil(p["max_masks"] / costs.crop_batch_size) * costs.crop_batch if "crop" in uses else 0.0
    parts = {"proposals": proposals, "features": features, "crops": crops, "text": new_names * costs.text_name}
    return Estimate(sum(parts.values()), parts)


def check_cost(costs: UnitCosts | None, work_size: tuple[int, int], values: dict[str, Any], new_names: int,
               limit: float | None) -> Estimate | None:
    """Refuse (``TooExpensive``) a request estimated past `limit` seconds, naming what to lower."""
    if costs is None or limit is None:
        return None
    found = estimate(costs, work_size, values, new_names)
    if found.seconds > limit:
        raise TooExpensive(f"these settings would take about {found.seconds:.0f} s here, over the {limit:g} s "
                           f"limit per request; lower {found.advice()} and try again")
    return found


def calibrate(segmenter: Any, options: Any) -> UnitCosts:
    """Measure ``UnitCosts`` on this device with the loaded models (a few seconds on a CPU, once at start):
    the proposal stage on a 1024 x 768 image at one and at four batches of point prompts (their difference
    is three batches, the rest the encoder), a dense pass at 448 px, four crops, and one class name."""
    from dataclasses import replace

    from .bench.measure import synthetic_image
    from .classify import crop_batch_size, dense_features, encode_crops
    from .clip.text import TextEmbeddingCache
    from .proposers import resolve_overlaps

    image = synthetic_image(1024)
    cfg = replace(options.proposals, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0,
                  crop_n_layers=0, min_mask_region_area=0)
    batch = cfg.points_per_batch
    side1, side4 = math.isqrt(batch), math.isqrt(4 * batch)
    proposer = segmenter.proposer_at(cfg.sam_input_size)

    def timed(fn: Callable[[], Any]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    one = timed(lambda: proposer.masks(image, replace(cfg, points_per_side=side1)))
    four = timed(lambda: proposer.masks(image, replace(cfg, points_per_side=side4)))
    per_batch = max((four - one) / max(math.ceil(side4 ** 2 / batch) - math.ceil(side1 ** 2 / batch), 1), 1e-4)
    clip = segmenter.clip
    clip_448 = timed(lambda: dense_features(clip, image, 448))
    quarter = np.zeros(image.shape[:2], dtype=bool)
    quarter[: image.shape[0] // 2, : image.shape[1] // 2] = True
    four_crops = resolve_overlaps([quarter, np.roll(quarter, image.shape[1] // 2, axis=1),
                                   np.roll(quarter, image.shape[0] // 2, axis=0), ~quarter])
    crops = timed(lambda: encode_crops(clip, image, four_crops, batch_size=4))
    text = timed(lambda: TextEmbeddingCache().names(clip, ["calibration"], options.templates))
    crop_batch = crop_batch_size(options.crop_batch_size, clip.device)
    return UnitCosts(cfg.sam_input_size, max(one - per_batch, 1e-4), per_batch, batch, clip_448,
                     crops / 4 * crop_batch, crop_batch, text)
