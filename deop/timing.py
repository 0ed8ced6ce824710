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
