"""Where one request's time goes on the server, piece by piece: what ``python -m deop bench-app`` reads
(the ``/timings`` endpoint) beside its own wall clock, to see what an answer spends outside the pipeline."""

from __future__ import annotations

import time
from typing import Any


class RequestClock:
    """Laps of one streamed request. Before the first answer: ``decode`` (the upload read and reduced to the
    working size) and ``checks`` (inputs, vocabulary, cost estimate, clean-up); per answer: ``pipeline``
    (the models' work until this result), ``render`` (making what the outputs show; ``views``: each
    output's share), ``session`` (kept for the next questions) and ``gradio`` (from the answer handed to
    Gradio until it asks for the next: its post-processing of the outputs and their sending); after the
    last: ``release`` (memory handed back). ``started``: when the handler began (seconds since the epoch, so
    that a client on the same machine can tell what came before: its upload, Gradio's queue)."""

    def __init__(self) -> None:
        self.started = time.time()
        self.stages: dict[str, float] = {}
        self.answers: list[dict[str, Any]] = []
        self._mark = time.perf_counter()

    def lap(self, name: str, answer: bool = False) -> None:
        """The time since the last lap, added to `name` (of the current answer with `answer`)."""
        now = time.perf_counter()
        target = self.answers[-1] if answer else self.stages
        target[name] = target.get(name, 0.0) + now - self._mark
        self._mark = now

    def answer(self) -> dict[str, float]:
        """A new answer's record (its ``views`` filled by ``deop.ui.segment_views``)."""
        self.answers.append({"views": {}})
        return self.answers[-1]["views"]

    def to_dict(self) -> dict[str, Any]:
        def rounded(d: dict) -> dict:
            return {k: rounded(v) if isinstance(v, dict) else round(v, 4) for k, v in d.items()}

        return {"started": self.started, **rounded(self.stages), "answers": [rounded(a) for a in self.answers]}
