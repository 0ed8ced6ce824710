"""Small thread-safe caches: the bounds that keep a long-running demo's memory flat."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from .timing import stopwatch


class LRUCache:
    """At most `max_entries` values; ``get_or_compute`` reports whether the value was reused."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max(0, int(max_entries))
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: Hashable, value: Any) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """The cached value and True, or the computed (and now cached) value and False.

        Computing happens outside the lock so that one slow image does not block other users.
        """
        value = self.get(key)
        if value is not None:
            return value, True
        value = compute()
        self.put(key, value)
        return value, False

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


@dataclass
class TimedValue:
    """A cached stage's value with what it cost when it was computed: a cache hit reports the first run's
    cost, so the app can show what was saved."""

    value: Any
    seconds: float


class StageCache:
    """One expensive stage's values (proposals, dense features, crop embeddings) per image and settings:
    an LRU, each value timed when computed, every lookup saying whether it was reused."""

    def __init__(self, stage: str, max_entries: int, device: Any = None) -> None:
        self.stage = stage
        self.device = device
        self.runs = 0  # how often the stage was computed: tests count it
        self._lru = LRUCache(max_entries)

    def get(self, key: Hashable, compute: Callable[[], Any]) -> tuple[TimedValue, bool]:
        def run() -> TimedValue:
            record: dict[str, float] = {}
            with stopwatch(record, self.stage, self.device):
                value = compute()
            self.runs += 1
            return TimedValue(value, record[self.stage])

        return self._lru.get_or_compute(key, run)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._lru

    def clear(self) -> None:
        self._lru.clear()

    @property
    def max_entries(self) -> int:
        return self._lru.max_entries

    def __len__(self) -> int:
        return len(self._lru)


@dataclass
class Stage:
    """One lookup of a cached stage, not yet made: whether it is ``ready`` can be asked before paying for
    it (a streamed answer skips a frame whose successor costs nothing)."""

    cache: StageCache
    key: Hashable
    compute: Callable[[], Any]

    @property
    def ready(self) -> bool:
        return self.key in self.cache

    def get(self) -> tuple[TimedValue, bool]:
        return self.cache.get(self.key, self.compute)
