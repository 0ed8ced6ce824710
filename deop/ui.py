"""What the web app shows, computed without Gradio so that it is unit-testable: tables, annotations,
downloads and plain-words messages. ``app.py`` only lays out widgets and calls these."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import render
from .errors import USER_ERRORS, internal_error
from .export import save_result
from .methods import METHOD_TITLES, METHODS
from .pipeline import Segmenter
from .proposers import PROPOSERS
from .result import STAGES, SegmentationResult

log = logging.getLogger("deop.app")

# What /segment returns, in order (then the inspector's hint and the session state, which API clients do
# not see): read a client's answer with ``dict(zip(SEGMENT_OUTPUTS, client.predict(...)))``.
SEGMENT_OUTPUTS = ("one_pass", "crop", "latency", "chart", "files", "heatmap_classes", "inspect")


class ModelLoader:
    """Loads the models in a background thread so the page is usable meanwhile; remembers the outcome.
    With `calibrate` (``deop.serving.calibrate``), it then measures this device's unit costs, with which
    the app refuses up front a request that cannot fit its time limit."""

    def __init__(self, segmenter: Segmenter, calibrate: Callable[[Segmenter], Any] | None = None) -> None:
        self.segmenter = segmenter
        self.error: str | None = None
        self.costs: Any = None
        self.ready = threading.Event()
        self._calibrate = calibrate
        self._thread = threading.Thread(target=self._load, daemon=True)

    def start(self) -> ModelLoader:
        self._thread.start()
        return self

    def _load(self) -> None:
        try:
            self.segmenter.load()
            if self._calibrate is not None:
                self.costs = self._calibrate(self.segmenter)
        except USER_ERRORS as exc:
            self.error = str(exc)
        except Exception as exc:  # a bug: logged with its traceback, never a "Ready" over broken models
            self.error = internal_error(exc, log, "model load")
        finally:
            self.ready.set()

    def status(self) -> str:
        c = self.segmenter.config
        if not self.ready.is_set():
            return "Loading models…"
        if self.error:
            return f"**Models could not be loaded.** {self.error}"
        weights = "random weights" if c.random_weights else f"{c.clip_pretrained} weights"
        return (f"Ready: CLIP {c.clip_model} ({weights}) and {self.segmenter.proposer_spec.title} on "
                f"{self.segmenter.device}")


def proposal_models(segmenter: Segmenter) -> list[tuple[str, str]]:
    """(title, name) of the proposal models the app offers: the configured one first, then every model
    marked ``in_app`` in the registry whose package is installed (the small ones of each family), so they
    can be compared on the same image. Larger models stay a ``--sam`` choice: one click should not
    download and hold gigabytes on a shared server."""
    kind = segmenter.config.proposal_model  # the trained model's generator when --model deop-trained
    kinds = [kind] + [name for name, spec in PROPOSERS.items() if spec.in_app and name != kind and spec.available()]
    return [(PROPOSERS[k].title, k) for k in kinds]


class SegmenterPool:
    """One Segmenter per offered proposal model (``Segmenter.with_proposal_model``), built on first use."""

    def __init__(self, base: Segmenter, kinds: list[str]) -> None:
        self.base = base
        self.kinds = list(kinds)
        self._by_kind = {base.config.proposal_model: base}
        self._lock = threading.Lock()

    def get(self, kind: str | None) -> Segmenter:
        kind = kind or self.base.config.proposal_model
        if kind not in self.kinds:
            raise ValueError(f"unknown proposal model {kind!r}; this app offers {', '.join(self.kinds)}")
        with self._lock:
            if kind not in self._by_kind:
                self._by_kind[kind] = self.base.with_proposal_model(kind)
            return self._by_kind[kind]


def segment_views(image: np.ndarray, result: SegmentationResult,
                  record: dict[str, float] | None = None) -> dict[str, object]:
    """Everything /segment shows for a result, by ``SEGMENT_OUTPUTS`` name: the first method's overlay,
    the compared method's (None when there is none or it is still running), the latency table, the chart
    (None until the result is complete: the first answer is the overlay), the heatmap's class choices and
    the inspector's picture. The downloads are None: they are made when asked (``downloads``). `image` is at
    the working size. `record`: the seconds each view took, added by name."""
    second = result.comparison[1] if result.comparison else None
    done = not result.pending
    makers: dict[str, Callable[[], object]] = {
        "one_pass": lambda: (image, annotations(result, result.primary)),
        "crop": lambda: (image, annotations(result, second)) if second in result.methods else None,
        "latency": lambda: latency_markdown(result), "chart": lambda: chart(result) if done else None,
        "files": lambda: None, "heatmap_classes": lambda: list(result.classes),
        "inspect": lambda: inspect_view(image, result),
    }
    views = {}
    for name, make in makers.items():
        start = time.perf_counter()
        views[name] = make()
        if record is not None:
            record[name] = record.get(name, 0.0) + time.perf_counter() - start
    return views


def run_status(result: SegmentationResult) -> str:
    """The line saying what is running and what is done, updated as a streamed result fills in."""
    done = ", ".join(f"{METHOD_TITLES.get(n, n)} ready ({m.timings['total']:.2f} s)" for n, m in result.methods.items())
    if result.pending:
        n = len(next(iter(result.methods.values())).segments)
        waiting = ", ".join(METHOD_TITLES.get(n_, n_) for n_ in result.pending)
        return f"{done}. Running: {waiting}, one CLIP pass for each of the {_count(n, 'segment')}…"
    return f"Done: {done}."


def outputs_by_name(values: tuple | list) -> dict[str, object]:
    """A gradio_client answer of /segment by output name."""
    return dict(zip(SEGMENT_OUTPUTS, values))


def annotations(result: SegmentationResult, method: str, added: Sequence[Any] = ()) -> list[tuple[np.ndarray, str]]:
    """(mask, name) pairs for gr.AnnotatedImage: one per class present, largest first, then one per segment
    added by clicks (``deop.explore.AddedSegment``), on top and named ``added_name`` so that each shows in
    the legend as its own entry."""
    label_map = result.methods[method].work_label_map
    if added:
        label_map = label_map.copy()
        for seg in added:
            label_map[seg.mask] = -1
    pairs = [(label_map == index, name) for index, name, _ in render.legend_entries(label_map, result.classes)]
    return pairs + [(visible, added_name(seg, k, result.classes)) for k, (seg, visible) in
                    enumerate(zip(added, _visible_parts(added)))]


def added_name(seg: Any, k: int, classes: list[str]) -> str:
    return f"+{k + 1} {classes[seg.label] if seg.label >= 0 else '(none)'}"


def _visible_parts(added: Sequence[Any]) -> list[np.ndarray]:
    """Each added mask minus the pixels of the segments added after it (the later one is on top)."""
    parts, above = [], None
    for seg in reversed(added):
        part = seg.mask if above is None else seg.mask & ~above
        above = seg.mask.copy() if above is None else above | seg.mask
        parts.append(part)
    return parts[::-1]


def added_under(added: Sequence[Any], x: int, y: int) -> int | None:
    """The index of the topmost (last added) added segment under (x, y)."""
    for k in range(len(added) - 1, -1, -1):
        mask = added[k].mask
        if 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and mask[y, x]:
            return k
    return None


def added_markdown(seg: Any, k: int, classes: list[str], refined: bool = False) -> str:
    """An added segment's label and top-5, and what it cost the server."""
    label = classes[seg.label] if seg.label >= 0 else "(none of these)"
    positive = sum(1 for *_, p in seg.points if p)
    prompts = f"{positive} positive, {len(seg.points) - positive} negative point" + (
        "s" if len(seg.points) - positive != 1 else "")
    how = "refined" if refined else "added by your click"
    reused = " and ".join(s.replace("_", " ") for s in seg.reused) or "nothing"
    top = ", ".join(f"{c} {p:.2f}" for c, p in seg.top5)
    return (f"**Added segment {k + 1}: {label}** ({seg.area} px, {how}; {prompts}; SAM's predicted IoU "
            f"{seg.sam_score:.2f})\n- One pass (DeOP): {top}\n\nAnswered in {seg.seconds * 1000:.0f} ms on the "
            f"server from the cached {reused} (no new encoder pass).")


def variant_views(image: np.ndarray, runs: Sequence[Any], classes: list[str]) -> tuple[list, str]:
    """The compare view: a small overlay per severance variant, captioned with its CLIP time and its
    agreement with DeOP, and a table of the segments whose label changes between variants."""
    from .explore import label_changes
    from .images import resize_max_side

    picture = resize_max_side(image, 384)  # thumbnails: six of them fit a phone's screen
    gallery, rows = [], []
    for run in runs:
        overlay = render.overlay(picture, run.method.label_map_at(picture.shape), classes, legend=False)
        a = run.agreement or {}
        gallery.append((overlay, f"{run.variant} · {run.clip_seconds:.2f} s · {100 * a.get('segments', 1):.0f}%"))
        rows.append(f"| {run.variant} | {run.clip_seconds:.2f} s{' ⟲' if run.reused else ''} | "
                    f"{100 * a.get('segments', 1):.0f}% | {100 * a.get('pixels', 1):.0f}% |")
    table = ["| variant | CLIP pass | same as DeOP: segments | pixels |", "|---|---:|---:|---:|", *rows]
    lines = ["\n".join(table), "⟲: its dense map came from the cache (the time is what it cost when computed). "
             + "; ".join(f"**{r.variant}**: {r.description.split(': ', 1)[-1]}" for r in runs) + "."]
    changes = label_changes(list(runs), classes)
    if changes:
        items = [f"- segment {c['id']} ({c['area']} px): " + ", ".join(f"{r.variant} *{c[r.variant]}*" for r in runs)
                 for c in changes]
        lines.append(f"**Segments whose label changes** ({len(changes)} shown, largest first):\n" + "\n".join(items))
    elif runs:
        lines.append("Every segment gets the same label from every variant.")
    return gallery, "\n\n".join(lines)


def latency_markdown(result: SegmentationResult) -> str:
    """A per-stage table of seconds for each method (a method still running shows "running…"), the
    speed-ups, and whether the cache was used."""
    names = list(result.methods) + list(result.pending)
    head = "| stage | " + " | ".join(METHOD_TITLES.get(n, n) for n in names) + " |"
    rows = [head, "|---" + "|---:" * len(names) + "|"]  # seconds right-aligned, so they line up
    for stage in STAGES:
        cells = [f"{result.methods[n].first_run_timings.get(stage, result.methods[n].timings[stage]):.3f} s"
                 if n in result.methods else "running…" for n in names]
        rows.append(f"| {stage.replace('_', ' ')} | " + " | ".join(cells) + " |")
    lines = ["\n".join(rows)]
    summary = result.comparison_summary()
    if summary:
        segments = summary.segments
        if summary.one_pass_won:
            lines.append(f"**One CLIP pass is {summary.clip:.1f}x faster than one pass per crop** "
                         f"(CLIP stages; {summary.total:.1f}x end to end, {segments}).")
        else:  # few masks: say so plainly rather than print "0.4x faster"
            lines.append(f"**The crop baseline was {1 / summary.clip:.1f}x faster here**: with only {segments}, "
                         "encoding the crops costs less than one pass over the whole image. One pass wins as "
                         "the masks grow: its cost is flat in their number, each crop costs an encoder pass.")
    if result.agreement:
        lines.append(f"The two methods agree on {100 * result.agreement['segments']:.0f}% of segments "
                     f"({100 * result.agreement['pixels']:.0f}% of their pixels).")
    if precision := precision_line(result):
        lines.append(precision)
    first = next(iter(result.methods.values()))
    if first.cached:
        this_call = first.timings["total"]
        lines.append(f"Proposals and image features reused from cache: this run took {this_call:.3f} s "
                     f"instead of {first.first_run_timings['total']:.3f} s (first-run times shown above).")
    return "\n\n".join(lines)


def precision_line(result: SegmentationResult) -> str:
    """The models' number format, in one line (empty for a result that does not say)."""
    precision = result.settings.get("precision")
    if not precision:
        return ""
    what = "the exact reference" if precision == "float32" else "autocast"
    both = " for both methods alike, so the comparison stays fair" if len(result.methods) + len(result.pending) > 1 \
        else ""
    return f"Precision: {precision} ({what}) for CLIP and the proposal model{both}."


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def chart(result: SegmentationResult) -> np.ndarray:
    data = {METHOD_TITLES.get(n, n): {s: m.first_run_timings.get(s, m.timings[s]) for s in STAGES}
            for n, m in result.methods.items()}
    return render.bar_chart_png(data, "Latency per stage (s)")


def downloads(image: np.ndarray, result: SegmentationResult, root: Path, added: Sequence[Any] = ()) -> list[str]:
    """Overlay PNGs (at the size of `image`, the one shown), label PNGs, results JSON and a ZIP of
    per-class masks (at the input size), in a fresh folder under `root`, with the segments `added` by clicks
    (``deop.explore.with_added``): what the app's Downloads tab makes when a visitor asks for it."""
    from .explore import with_added

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="result-", dir=root))
    return [str(p) for p in save_result(image, with_added(result, added), folder, "segmentation",
                                        masks=True).values()]


def heatmap_for(image: np.ndarray, result: SegmentationResult, class_name: str) -> np.ndarray | None:
    """A class's CLIP similarity over the image, or None when no dense map ran."""
    if result.similarity is None or class_name not in result.classes:
        return None
    return render.heatmap(image, result.similarity[result.classes.index(class_name)])


def inspect_view(image: np.ndarray, result: SegmentationResult) -> np.ndarray:
    """The main method's overlay at the image's own size (no legend or banner strip, so a click's pixel
    position is a position in the label map). Rendered once per result; clicks only highlight it."""
    return render.overlay(image, result.methods[result.primary].label_map_at(image.shape), result.classes,
                          legend=False)


def highlight_at(view: np.ndarray, result: SegmentationResult, x: int, y: int) -> np.ndarray:
    """``view`` with the segment under (x, y) highlighted, or unchanged where there is none."""
    index = segment_under(result, x, y)
    return view if index is None else render.highlight(view, result.work_segment_map == index)


def render_highlight(view: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``view`` with `mask` highlighted (an added segment's)."""
    return render.highlight(view, mask)


def segment_under(result: SegmentationResult, x: int, y: int) -> int | None:
    seg = result.work_segment_map
    if seg is None:
        return None
    h, w = seg.shape
    if not (0 <= y < h and 0 <= x < w) or seg[y, x] < 0:
        return None
    return int(seg[y, x])


def segment_at(result: SegmentationResult, x: int, y: int) -> str:
    """Top-5 classes of the segment under a clicked pixel, as Markdown."""
    if result.work_segment_map is None:
        return "This method has no segments to click."
    index = segment_under(result, x, y)
    if index is None:
        return ("No segment here (this pixel was filled from the dense map). Click it again with "
                "\"add a segment\" chosen, or in \"inspect\" mode on any uncovered pixel, to add one.")
    lines = [f"**Segment {index}** ({result.methods[m].segments[index].area} px)" for m in result.methods
             if METHODS[m].uses_proposals][:1]
    for name, m in result.methods.items():
        if m.segments:
            top = ", ".join(f"{c} {p:.2f}" for c, p in m.segments[index].top5)
            lines.append(f"- {METHOD_TITLES.get(name, name)}: {top}")
    return "\n".join(lines)


def class_segments(result: SegmentationResult, class_name: str, limit: int = 5, added: Sequence[Any] = ()) -> str:
    """Top-5 classes of the largest segments labelled `class_name` (what a click on a legend entry or
    a region of the annotated overlay selects), or of the added segment that entry names."""
    for k, seg in enumerate(added):
        if class_name == added_name(seg, k, result.classes):
            return added_markdown(seg, k, result.classes)
    if class_name not in result.classes:
        return "Click a coloured region to see its segments' top-5 classes."
    index = result.classes.index(class_name)
    segments = sorted((s for s in result.methods[result.primary].segments if s.label == index), key=lambda s: -s.area)
    if not segments:
        return f"**{class_name}** comes from the dense per-pixel map here, not from a SAM segment."
    lines = [f"**{class_name}**: {_count(len(segments), 'segment')}"]
    for seg in segments[:limit]:
        top = ", ".join(f"{c} {p:.2f}" for c, p in seg.top5)
        lines.append(f"- segment {seg.id} ({seg.area} px): {top}")
    return "\n".join(lines)
