"""What ``python -m deop bench-app --browser`` measures: the app's page as a visitor waits for it, in Chromium.

The API measure (``deop.bench.app``) waits as ``gradio_client`` does, and that client downloads every image
file of every streamed answer one after another, each on a new connection, then all of them again when the
stream ends. A browser fetches them in parallel over kept-alive connections and does not fetch again a URL
it has loaded (the overlay's base image; the mask of a class whose pixels did not change). So this drives
the page itself with Playwright in headless Chromium, on a fresh page per image: upload the image, type its
vocabulary, press Segment; then type one class more at the end of the box, which the page re-runs by
itself from the cached proposals and features. Times are the page's own clock
(``performance.now``): from the press (for the edit: from its request, which the page sends once typing
has paused for 0.6 s; that wait is recorded apart) to the frame after the overlays' images have loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .app import (
    WARM_UP_VOCABULARY,
    AppBenchError,
    Case,
    answer_times,
    changed_vocabulary,
    class_names,
    wall_spread,
    warm_up_image,
)

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# The overlays: what an answer is for (the inspector's image below loads lazily, the chart comes with "Done")
ANSWER_IMAGES = "#one-pass img, #crop img"
STATUS_TEXT = '#run-status [data-testid="markdown"]'  # the status line itself: its box also shows Gradio's timer

# From now on, every animation frame: `first` once the status has changed and the one-pass overlay's images
# have loaded, `done` once it says Done and every overlay image has loaded (`shown`: their URLs then).
# `press`: click Segment now.
WATCH_ANSWER = """([press, answer, STATUS]) => {
  const state = window.__deop_bench = {start: performance.now(), first: null, done: null, shown: []};
  const status = () => (document.querySelector(STATUS) || {textContent: ''}).textContent;
  const before = status();
  const loaded = selector => {
    const images = [...document.querySelectorAll(selector)];
    return images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0);
  };
  const tick = () => {
    const now = status();
    if (now !== before) {
      if (state.first === null && loaded('#one-pass img')) state.first = performance.now();
      if (now.includes('Done') && loaded(answer)) {
        state.done = performance.now();
        state.shown = [...new Set([...document.querySelectorAll(answer)].map(i => i.currentSrc))];
        return;
      }
    }
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
  const run = document.querySelector('#run');
  if (press) (run.tagName === 'BUTTON' ? run : run.querySelector('button')).click();
}"""

# Of the images `shown`, those the page fetched after `since` (not those it had), and their bytes.
FETCHED = """([shown, since]) => {
  const files = performance.getEntriesByType('resource').filter(e => shown.includes(e.name) && e.startTime >= since);
  return [files.length, files.reduce((n, e) => n + (e.transferSize || 0), 0)];
}"""
# The time of the page's last input event (a keystroke, a paste), on its clock.
WATCH_INPUT = "() => document.addEventListener('input', () => { window.__deop_input = performance.now(); }, true)"


@dataclass
class PageRecord:
    """One answer in the page. first_s: until the one-pass overlay was drawn; wall_s: until everything
    was (status Done, the overlays' images loaded); from the press of Segment, or for a vocabulary change
    from the request the page sent (``typed_to_sent_s`` after the last input: the page waits for typing to
    pause). images: the overlays' image files shown; files, bytes: those of them the page fetched for this
    answer and their bytes over the network (a browser does not fetch again a URL it has loaded). reruns:
    the re-run requests an edit sent (one; two in versions whose debounce also sent an empty one)."""

    request: str
    image: str
    vocabulary: str
    method: str
    first_s: float
    wall_s: float
    images: int
    files: int
    bytes: int
    typed_to_sent_s: float | None = None
    reruns: int | None = None


def find_chromium(path: str | None = None) -> str:
    """The Chromium to drive: `path`, else $DEOP_CHROMIUM, else Debian's /usr/bin/chromium or one on PATH."""
    named = path or os.environ.get("DEOP_CHROMIUM")
    if named:
        if not Path(named).is_file():
            raise AppBenchError(f"no Chromium at {named} ({'--chromium' if path else '$DEOP_CHROMIUM'})")
        return str(named)
    for candidate in filter(None, ["/usr/bin/chromium", shutil.which("chromium")]):
        if Path(candidate).is_file():
            return str(candidate)
    raise AppBenchError("--browser needs Chromium: install it (Debian: apt-get install chromium) or name it "
                        "with --chromium PATH or $DEOP_CHROMIUM")


def measure_page(url: str, cases: Sequence[Case], chromium: str, method: str = "both",
                 report: Callable[[PageRecord], None] = lambda record: None,
                 timeout: float = 300.0) -> tuple[str, list[PageRecord]]:
    """The browser's version, and each case's two answers in the page at `url` (after one warm-up answer
    on a synthetic image, which also waits for the models to load). `timeout`: seconds for any one wait."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        raise AppBenchError("--browser needs Playwright: pip install playwright (it drives the Chromium "
                            "installed here; no browser download is needed)") from None
    if not url.startswith(("http://", "https://")):
        raise AppBenchError(f"--browser needs the page's URL, not {url!r} (a Space's is https://<owner>-<name>.hf.space)")
    records: list[PageRecord] = []
    try:
        with sync_playwright() as p, tempfile.TemporaryDirectory() as tmp:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            try:
                _visit_each(_Visit(browser, url, method, timeout), cases, tmp, records, report)
            finally:
                version = browser.version
                browser.close()
    except Error as exc:  # the browser's own failures (no page there, a timeout, a control missing): one line
        raise AppBenchError(f"the browser failed at {url}: {str(exc).strip().splitlines()[0]}") from None
    return version, records


def _visit_each(visit: _Visit, cases: Sequence[Case], folder: str, records: list[PageRecord],
                report: Callable[[PageRecord], None]) -> None:
    used = class_names(WARM_UP_VOCABULARY).union(*(class_names(c.vocabulary) for c in cases))
    warm_up = Case(warm_up_image(folder), WARM_UP_VOCABULARY)
    for kind, case in [("warm-up", warm_up), *(("first", c) for c in cases)]:
        visit.open()
        records.append(visit.segment(kind, case))
        report(records[-1])
        if kind != "warm-up":
            records.append(visit.edit(case, changed_vocabulary(case.vocabulary, used)))
            report(records[-1])


class _Visit:
    """One browser tab on the app, used for one image after another (a fresh page for each)."""

    def __init__(self, browser: Any, url: str, method: str, timeout: float) -> None:
        self.browser, self.url, self.method, self.timeout_ms = browser, url, method, timeout * 1000
        self.page = None
        self.expected: str | None = None  # the vocabulary an edit's re-run must carry
        self.reruns: list[Any] = []  # the queue requests carrying the image since the edit began

    def _on_request(self, request: Any) -> None:
        """Keep the re-runs (queue requests with the image: the status timer's and the heatmap's have none)."""
        if self.expected is not None and "queue/join" in request.url and '"path"' in (request.post_data or ""):
            self.reruns.append(request)

    def open(self) -> None:
        if self.page is not None:
            self.page.close()
        self.page = self.browser.new_page(viewport={"width": 1366, "height": 900})
        self.page.goto(self.url, wait_until="load")  # a status timer polls: the network is never idle
        self.page.wait_for_selector("#run-status", state="attached", timeout=self.timeout_ms)
        self.page.evaluate(WATCH_INPUT)
        self.page.on("request", self._on_request)

    def segment(self, kind: str, case: Case) -> PageRecord:
        page = self.page
        with page.expect_response(lambda r: "/upload?" in r.url, timeout=self.timeout_ms):
            page.locator("input[type=file]").first.set_input_files(case.image)
        page.get_by_label("Classes").fill(case.vocabulary)
        page.get_by_label(self.method, exact=True).check()
        page.evaluate(WATCH_ANSWER, [True, ANSWER_IMAGES, STATUS_TEXT])
        state = self._answer(case.image, case.vocabulary)
        return self._record(kind, case.image, case.vocabulary, state, state["start"])

    def edit(self, case: Case, vocabulary: str) -> PageRecord:
        """Type the class `vocabulary` adds at the end of the box, key by key without pauses, as a visitor
        edits. Should a loaded machine pause over 0.6 s between two keys, the page re-runs a part first: an
        error, not a figure."""
        box = self.page.get_by_label("Classes")
        box.click()
        box.evaluate("e => e.setSelectionRange(e.value.length, e.value.length)")
        self.page.evaluate(WATCH_ANSWER, [False, ANSWER_IMAGES, STATUS_TEXT])
        self.expected, self.reruns = vocabulary, []
        self.page.keyboard.type(vocabulary[len(case.vocabulary):])
        if box.input_value() != vocabulary:
            raise AppBenchError(f"the vocabulary box reads {box.input_value()!r}, not {vocabulary!r}")
        typed = self.page.evaluate("() => window.__deop_input")
        state = self._answer(case.image, vocabulary)
        sent = self._sent_at()  # known once the answer is: the request leaves after typing pauses
        record = self._record("vocabulary change", case.image, vocabulary, state, sent)
        record.typed_to_sent_s = round((sent - typed) / 1000, 4)
        record.reruns = len(self.reruns)
        self.expected = None
        return record

    def _sent_at(self) -> float:
        """When the edit's re-run left, on the page's clock (Playwright's record is on the epoch's). Re-runs
        of an empty box (the app's debounce sent one before each edit until 671e140) answer nothing; one of
        a part of the edit would have answered first, so it is an error."""
        sent = [json.loads(r.post_data or "{}").get("data", [None, None])[1] for r in self.reruns]
        ours = [r for r, text in zip(self.reruns, sent, strict=True) if text == self.expected]
        others = [text for text in sent if text and text != self.expected]
        if len(ours) != 1 or others:
            raise AppBenchError(f"the page sent {len(ours)} re-run(s) of {self.expected!r} for one edit"
                                + (f", and re-ran {others!r} before it: typing paused" if others else ""))
        ours[0].response()  # its timing is filled in once the queue has answered
        return ours[0].timing["startTime"] - self.page.evaluate("() => performance.timeOrigin")

    def _answer(self, image: str, vocabulary: str) -> dict[str, Any]:
        """Wait for the answer ``WATCH_ANSWER`` watches; its record (times on the page's clock)."""
        try:
            self.page.wait_for_function("() => window.__deop_bench.done !== null", timeout=self.timeout_ms)
        except Exception:
            status = self.page.inner_text("#run-status") or "(empty)"
            raise AppBenchError(f"the page did not show an answer for {Path(image).name} with {vocabulary!r} "
                                f"within {self.timeout_ms / 1000:g} s; its status line: {status}") from None
        return self.page.evaluate("() => window.__deop_bench")

    def _record(self, kind: str, image: str, vocabulary: str, state: dict[str, Any], start: float) -> PageRecord:
        """The answer `state` timed from `start`: the press, or the edit's request."""
        files, size = self.page.evaluate(FETCHED, [state["shown"], start])
        first = state["first"] if state["first"] is not None else state["done"]
        return PageRecord(kind, Path(image).name, vocabulary, self.method, round((first - start) / 1000, 4),
                          round((state["done"] - start) / 1000, 4), len(state["shown"]), files, size)


def summarise_page(records: Sequence[PageRecord]) -> dict[str, dict[str, Any]]:
    """Per kind of request: how many, the medians of first and complete answer, the range of the latter,
    and the medians of the overlays' images shown and of those fetched (count and bytes)."""
    out = {}
    for kind in dict.fromkeys(r.request for r in records):
        rows = [r for r in records if r.request == kind]
        out[kind] = {**answer_times(rows), "images_median": statistics.median(r.images for r in rows),
                     "files_median": statistics.median(r.files for r in rows),
                     "bytes_median": statistics.median(r.bytes for r in rows)}
        typed = [r.typed_to_sent_s for r in rows if r.typed_to_sent_s is not None]
        if typed:
            out[kind]["typed_to_sent_median_s"] = round(statistics.median(typed), 3)
            out[kind]["reruns_median"] = statistics.median(r.reruns or 0 for r in rows)
    return out


def format_page_summary(summary: dict[str, dict[str, Any]]) -> str:
    """``summarise_page`` as the table bench-app prints."""
    lines = [f"{'request':<18} {'n':>2}  {'first':<7} {'complete: median (min-max)':<28} "
             "overlay images fetched/shown (median, bytes)"]
    for kind, s in summary.items():
        spread = wall_spread(s)
        typed = (f"; sent {s['typed_to_sent_median_s']:.2f} s after the last input, {s['reruns_median']:g} request(s)"
                 if "typed_to_sent_median_s" in s else "")
        lines.append(f"{kind:<18} {s['n']:>2}  {s['first_median_s']:<5.2f} s {spread:<28} "
                     f"{s['files_median']:g}/{s['images_median']:g} ({s['bytes_median']:g} B){typed}")
    return "\n".join(lines)
