"""Stage timing that is honest on a GPU (CUDA work is asynchronous, so the clock waits for it), and the
deadline a request checks between its steps."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .errors import Cancelled, SegmentTimeout


def synchronize(device: Any) -> None:
    if device is None:
        return
    import torch

    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


@contextmanager
def stopwatch(record: dict[str, float], stage: str, device: Any = None) -> Iterator[None]:
    """Adds the seconds spent in the block to ``record[stage]``."""
    synchronize(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        synchronize(device)
        record[stage] = record.get(stage, 0.0) + time.perf_counter() - start


class Deadline:
    """A time limit, and whether the client is still there, checked between steps (SAM point batches, crop
    batches, stages), so a request that runs too long or whose user left stops cleanly and frees its
    worker instead of running on unseen in the background.

    cancelled: asked at every check; True stops the request with ``Cancelled``.
    """

    def __init__(self, seconds: float | None, cancelled: Callable[[], bool] | None = None) -> None:
        self.seconds = seconds
        self.end = None if seconds is None else time.monotonic() + seconds
        self.cancelled = cancelled

    def check(self, stage: str = "") -> None:
        if self.cancelled is not None and self.cancelled():
            raise Cancelled(f"stopped{' during ' + stage if stage else ''}: the client went away")
        if self.end is not None and time.monotonic() > self.end:
            where = f" during {stage}" if stage else ""
            raise SegmentTimeout(f"stopped after the {self.seconds:g} s time limit{where}; try a smaller image, "
                                 "fewer points per side or the 'fast' preset")
