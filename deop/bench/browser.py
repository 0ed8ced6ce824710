"""What ``python -m deop bench-app --browser`` measures: the app's page as a visitor waits for it, in Chromium.

The API measure (``deop.bench.app``) waits as ``gradio_client`` does, and that client downloads every image
file of every streamed answer one after another, each on a new connection, then all of them again when the
stream ends. A browser fetches them in parallel over kept-alive connections and shows a URL it has already
loaded from its cache (the overlay's base image; the mask of a class whose pixels did not change). So this
drives the page itself with Playwright in headless Chromium, on a fresh page per image: upload the image,
type its vocabulary, press Segment; then type one class more, as a visitor edits, which the page re-runs by
itself from the cached proposals and features. Times are the page's own clock (``performance.now``): from
the press (for the edit: from its request, which the page sends 0.6 s after the last keystroke by design;
that wait is recorded apart) to the frame after the answer's images have loaded.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .app import WARM_UP_VOCABULARY, AppBenchError, Case, changed_vocabulary, class_names, warm_up_image

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ANSWER_IMAGES = "#one-pass img, #crop img, #inspect img"  # what an answer shows; the chart comes with "Done"
STATUS_TEXT = '#run-status [data-testid="markdown"]'  # the status line itself: its box also shows Gradio's timer

# From now on, every animation frame: `first` once the status has changed and the one-pass overlay's images
# have loaded, `done` once it says Done and every image of the answer has loaded. `press`: click Segment now.
WATCH_ANSWER = """([press, answer, STATUS]) => {
  const state = window.__deop_bench = {start: performance.now(), first: null, done: null};
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
      if (now.includes('Done') && loaded(answer)) { state.done = performance.now(); return; }
    }
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
  const run = document.querySelector('#run');
  if (press) (run.tagName === 'BUTTON' ? run : run.querySelector('button')).click();
}"""

# The image files the page fetched since `since`, and their bytes over the network (0 from the cache).
FILES_SINCE = """since => {
  const files = performance.getEntriesByType('resource').filter(e => e.name.includes('file=') && e.startTime >= since);
  return [files.length, files.reduce((n, e) => n + (e.transferSize || 0), 0)];
}"""


@dataclass
class PageRecord:
    """One answer in the page. first_s: until the one-pass overlay was drawn; wall_s: until everything
    was (status Done, every image loaded); from the press of Segment, or for a vocabulary change from the
    request the page sent (``typed_to_sent_s`` after the last keystroke: the page waits for typing to
    pause). files, bytes: the image files the page fetched for the answer, and what they cost over the
    network (a file the browser had cached costs 0)."""

    request: str
    image: str
    vocabulary: str
    method: str
    first_s: float
    wall_s: float
    files: int
    bytes: int
    typed_to_sent_s: float | None = None


def find_chromium(path: str | None = None) -> str:
    """The Chromium to drive: `path`, else $DEOP_CHROMIUM, else Debian's /usr/bin/chromium or one on PATH."""
    candidates = [path] if path else [os.environ.get("DEOP_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")]
    for candidate in filter(None, candidates):
        if Path(candidate).is_file():
            return str(candidate)
    raise AppBenchError(f"no Chromium at {path}" if path else "--browser needs Chromium: install it (Debian: "
                        "apt-get install chromium) or name it with --chromium PATH or $DEOP_CHROMIUM")


def measure_page(url: str, cases: Sequence[Case], chromium: str, method: str = "both",
                 report: Callable[[PageRecord], None] = lambda record: None,
                 timeout: float = 300.0) -> tuple[str, list[PageRecord]]:
    """The browser's version, and each case's two answers in the page at `url` (after one warm-up answer
    on the first case's image with another vocabulary, which also waits for the models to load)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise AppBenchError("--browser needs Playwright: pip install playwright (it drives the Chromium "
                            "installed here; no browser download is needed)") from None
    records: list[PageRecord] = []
    used = class_names(WARM_UP_VOCABULARY).union(*(class_names(c.vocabulary) for c in cases))
    with sync_playwright() as p, tempfile.TemporaryDirectory() as tmp:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            visit = _Visit(browser, url, method, timeout)
            warm_up = Case(warm_up_image(tmp), WARM_UP_VOCABULARY)
            for kind, case in [("warm-up", warm_up), *(("first", c) for c in cases)]:
                visit.open()
                records.append(visit.segment(kind, case))
                report(records[-1])
                if kind != "warm-up":
                    records.append(visit.edit(case, changed_vocabulary(case.vocabulary, used)))
                    report(records[-1])
        finally:
            version = browser.version
            browser.close()
    return version, records


class _Visit:
    """One browser tab on the app, used for one image after another (a fresh page for each)."""

    def __init__(self, browser: Any, url: str, method: str, timeout: float) -> None:
        self.browser, self.url, self.method, self.timeout_ms = browser, url, method, timeout * 1000
        self.page = None
        self.marker, self.sent = None, None  # a class being typed, and the queue request that carried it

    def _on_request(self, request: Any) -> None:
        if self.marker and self.sent is None and "queue/join" in request.url:
            self.sent = request if self.marker in (request.post_data or "") else None

    def open(self) -> None:
        if self.page is not None:
            self.page.close()
        self.page = self.browser.new_page(viewport={"width": 1366, "height": 900})
        self.page.goto(self.url, wait_until="load")  # a status timer polls: the network is never idle
        self.page.wait_for_selector("#run-status", state="attached", timeout=self.timeout_ms)
        self.page.on("request", self._on_request)

    def segment(self, kind: str, case: Case) -> PageRecord:
        page = self.page
        with page.expect_response(lambda r: "upload" in r.url, timeout=self.timeout_ms):
            page.locator("input[type=file]").first.set_input_files(case.image)
        page.get_by_label("Classes").fill(case.vocabulary)
        page.get_by_label(self.method, exact=True).check()
        page.wait_for_timeout(1000)  # the page's own re-run of the typed vocabulary (no session yet: nothing) passes
        page.evaluate(WATCH_ANSWER, [True, ANSWER_IMAGES, STATUS_TEXT])
        return self._record(kind, case.image, case.vocabulary, sent=False)

    def edit(self, case: Case, vocabulary: str) -> PageRecord:
        """Type the class `vocabulary` adds at the end of the box, as a visitor would."""
        page, added = self.page, vocabulary[len(case.vocabulary):]
        box = page.get_by_label("Classes")
        box.click()
        box.press("End")
        page.evaluate(WATCH_ANSWER, [False, ANSWER_IMAGES, STATUS_TEXT])
        self.marker, self.sent = added.strip(", "), None
        box.type(added, delay=60)
        typed = page.evaluate("() => performance.now()")
        record = self._record("vocabulary change", case.image, vocabulary, sent=True)
        record.typed_to_sent_s = round((self._sent_at() - typed) / 1000, 4)
        return record

    def _sent_at(self) -> float:
        """When the request carrying the typed class left, on the page's clock (Playwright's is the epoch's)."""
        if self.sent is None:
            raise AppBenchError(f"the page sent no request with the class typed ({self.marker!r})")
        return self.sent.timing["startTime"] - self.page.evaluate("() => performance.timeOrigin")

    def _state(self) -> dict[str, Any]:
        return self.page.evaluate("() => window.__deop_bench")

    def _record(self, kind: str, image: str, vocabulary: str, sent: bool) -> PageRecord:
        try:
            self.page.wait_for_function("() => window.__deop_bench.done !== null", timeout=self.timeout_ms)
        except Exception:
            status = self.page.inner_text("#run-status") or "(empty)"
            raise AppBenchError(f"the page did not show an answer for {Path(image).name} with {vocabulary!r} "
                                f"within {self.timeout_ms / 1000:g} s; its status line: {status}") from None
        state = self._state()
        start = self._sent_at() if sent else state["start"]
        files, size = self.page.evaluate(FILES_SINCE, start)
        first = state["first"] if state["first"] is not None else state["done"]
        return PageRecord(kind, Path(image).name, vocabulary, self.method, round((first - start) / 1000, 4),
                          round((state["done"] - start) / 1000, 4), files, size)


def summarise_page(records: Sequence[PageRecord]) -> dict[str, dict[str, Any]]:
    """Per kind of request: how many, the medians of first and complete answer, the range of the latter,
    and the median count and bytes of files fetched."""
    out = {}
    for kind in dict.fromkeys(r.request for r in records):
        rows = [r for r in records if r.request == kind]
        wall = [r.wall_s for r in rows]
        out[kind] = {"n": len(rows), "first_median_s": round(statistics.median(r.first_s for r in rows), 3),
                     "wall_median_s": round(statistics.median(wall), 3), "wall_min_s": min(wall),
                     "wall_max_s": max(wall), "files_median": statistics.median(r.files for r in rows),
                     "bytes_median": statistics.median(r.bytes for r in rows)}
        typed = [r.typed_to_sent_s for r in rows if r.typed_to_sent_s is not None]
        if typed:
            out[kind]["typed_to_sent_median_s"] = round(statistics.median(typed), 3)
    return out


def format_page_summary(summary: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'request':<18} {'n':>2}  {'first':<7} {'complete: median (min-max)':<28} files (median, bytes)"]
    for kind, s in summary.items():
        spread = f"{s['wall_median_s']:.2f} s ({s['wall_min_s']:.2f}-{s['wall_max_s']:.2f})"
        typed = (f"; sent {s['typed_to_sent_median_s']:.2f} s after the last key"
                 if "typed_to_sent_median_s" in s else "")
        lines.append(f"{kind:<18} {s['n']:>2}  {s['first_median_s']:<5.2f} s {spread:<28} "
                     f"{s['files_median']:g} ({s['bytes_median']:g} B){typed}")
    return "\n".join(lines)
