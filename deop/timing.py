"""Stage timing that is honest on a GPU: CUDA work is asynchronous, so the clock waits for it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def synchronize(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


@contextmanager
def stopwatch(record: dict[str, float], stage: str, device: torch.device | str | None = None) -> Iterator[None]:
    """Adds the seconds spent in the block to ``record[stage]``."""
    synchronize(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        synchronize(device)
        record[stage] = record.get(stage, 0.0) + time.perf_counter() - start


class SegmentTimeout(TimeoutError):
    """A request ran past its time limit; it was stopped between two steps and nothing was cached."""


class Deadline:
    """A time limit checked between steps (SAM point batches, crop batches, stages), so a request that
    runs too long stops cleanly and frees its worker instead of running on unseen in the background."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.end = None if seconds is None else time.monotonic() + seconds

    def check(self, stage: str = "") -> None:
        if self.end is not None and time.monotonic() > self.end:
            where = f" during {stage}" if stage else ""
            raise SegmentTimeout(f"stopped after the {self.seconds:g} s time limit{where}; try a smaller image, "
                                 "fewer points per side or the 'fast' preset")


class DeadlineBatches:
    """Mixin for SAM's and SAM 2's automatic mask generators: check ``self.deadline`` before each batch of
    point prompts, the generators' unit of work, so a long request stops between batches (outputs
    unchanged). Both generators name that step ``_process_batch``."""

    deadline: Deadline

    def _process_batch(self, *args, **kwargs):
        self.deadline.check("mask proposals")
        return super()._process_batch(*args, **kwargs)
