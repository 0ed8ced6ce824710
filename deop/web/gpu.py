"""The ZeroGPU boundary: the model work, and only it, behind Hugging Face's ``@spaces.GPU``.

On ZeroGPU the decorated function runs in a forked worker process, its arguments and results pickled: so
only pure computations are decorated (arrays and options in, results out), never a handler, whose session
bookkeeping would stay in the worker and be lost to the next request. What the worker caches (proposals,
features) helps the next call that lands on it; a call that lands elsewhere recomputes. Progress and the
client-gone probe cannot cross into a ZeroGPU worker (ZeroGPU enforces its own duration); elsewhere they
apply (``Server.local``). Outside a ZeroGPU Space the decorator changes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from .. import explore
from ..ui import SegmenterPool


def zero_gpu() -> bool:
    """On a ZeroGPU Space: no CUDA outside a ``@spaces.GPU`` call (so nothing to calibrate at start)."""
    return bool(os.environ.get("SPACES_ZERO_GPU"))


def on_gpu(fn: Callable, duration: Callable[..., float] | float) -> Callable:
    """ZeroGPU's ``@spaces.GPU`` (a GPU attached for the call, `duration` seconds, or asked from the inputs)
    when the ``spaces`` package is installed; outside a ZeroGPU Space it returns the function unchanged."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)


def stream_seconds(model: str, work: Any, vocabulary: Any, method: str, opts: Any, *args: Any, **kwargs: Any) -> float:
    """The GPU time a segmentation asks ZeroGPU for, from its settings (15-120 s)."""
    points = opts.proposals.points_per_side
    return min(120.0, 15.0 + 0.01 * float(points) ** 2 + (15.0 if method in ("crop", "both") else 0))


class ModelWork:
    """The four computations the handlers run on the models, each decorated for ZeroGPU: ``stream`` (a
    segmentation, streamed), ``add`` (a segment from point prompts), ``compare`` (the severance variants,
    streamed) and ``relabel`` (kept added segments for a new vocabulary). Each takes the proposal model's
    name and plain values, and stops at `time_limit` seconds."""

    def __init__(self, pool: SegmenterPool, time_limit: float | None) -> None:
        def stream_on_gpu(model: str, work, vocabulary, method: str, opts, input_size, progress=None,
                          cancelled=None) -> Iterator:
            yield from pool.get(model).stream(work, vocabulary, method, options=opts, timeout=time_limit,
                                              progress=progress, cancelled=cancelled, input_size=input_size)

        def add_on_gpu(model: str, work, vocabulary: str, points, opts, previous, cancelled=None):
            return explore.add_segment(pool.get(model), work, vocabulary, points, opts, previous=previous,
                                       timeout=time_limit, cancelled=cancelled)

        def compare_on_gpu(model: str, work, vocabulary: str, opts, input_size, cancelled=None) -> Iterator:
            yield from explore.compare_variants(pool.get(model), work, vocabulary, opts, input_size=input_size,
                                                timeout=time_limit, cancelled=cancelled)

        def relabel_on_gpu(model: str, work, vocabulary, added: list, opts) -> list:
            seg = pool.get(model)
            return [explore.relabel(seg, work, vocabulary, a, opts) for a in added]

        self.stream = on_gpu(stream_on_gpu, stream_seconds)
        self.add = on_gpu(add_on_gpu, 30)
        self.compare = on_gpu(compare_on_gpu, 90)
        self.relabel = on_gpu(relabel_on_gpu, 30)
