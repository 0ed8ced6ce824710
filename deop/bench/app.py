"""What ``python -m deop bench-app`` measures: the web app's latency as its users wait for it, through its API.

``python -m deop bench`` times the pipeline inside one process. A user of the app also waits for the
upload, the queue, rendering the overlays and writing the downloads, so this times whole requests to the
app's ``/segment`` endpoint with ``gradio_client``, wall clock at the client. Each image is sent twice:
with its vocabulary (every stage runs), then with one class added (the app reuses the image's proposals
and features, so only the new name is encoded): the two latencies the README promises. A first request on
a synthetic image goes before them and is reported apart, since it also waits for the models to load.

It launches ``app.py`` itself on a free local port with the flags given (``--app-args``), or measures an
app already running anywhere, a Hugging Face Space included (``--url``: a URL or a Space's id).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DeopError
from ..vocabulary import parse_vocabulary

REQUESTS = ("warm-up", "first", "vocabulary change")
WARM_UP_VOCABULARY = "sky, ground"


def many_masks(n: int) -> dict[str, float | int]:
    """The app's SAM options for about `n` segments per image whatever SAM's weights: quality thresholds
    at zero, NMS off, at most `n` masks. A randomly initialised SAM keeps about one mask per image at the
    default thresholds, which makes the crop baseline (one CLIP pass per mask) nearly free; real weights
    give tens of masks. The proposal stage grows too, though less than that: the same point prompts are
    decoded, but SAM post-processes every unfiltered mask (about 300 at 10x10 points) before the limit
    (measured: 10.4 s against 5.2 s with the fast preset), so read the crop stage, not the total."""
    return {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0, "max_masks": n}


def app_flags(options: dict[str, float | int]) -> list[str]:
    """App options (``many_masks``) as the flags that make them app.py's defaults: what a page sends."""
    return [arg for name, value in options.items() for arg in (f"--{name.replace('_', '-')}", str(value))]


class AppBenchError(DeopError):
    """The app could not be started or measured; the message says why."""


@dataclass
class Case:
    image: str
    vocabulary: str


@dataclass
class AppRecord:
    """One request. first_s: until the first streamed answer (the one-pass overlay, before the crops);
    wall_s: until the complete one. pipeline_s: the Segmenter's stages as this request ran them (a reused
    stage counts zero), read from the results JSON the app returns; the rest of wall_s is upload, queue,
    rendering and downloads; ``outside`` splits it (see ``outside_pipeline``)."""

    request: str  # one of REQUESTS
    image: str
    vocabulary: str
    method: str
    wall_s: float
    pipeline_s: float
    cached: list[str] = field(default_factory=list)
    segments: int = 0
    stages: dict[str, float] = field(default_factory=dict)  # see stage_seconds
    first_s: float | None = None
    server: dict[str, Any] = field(default_factory=dict)  # the app's own record (/timings), when it has one
    outside: dict[str, float] = field(default_factory=dict)  # see outside_pipeline


EXTRA_CLASSES = ("background", "shadow", "floor", "light", "texture", "window", "road", "water", "plant", "metal")


def class_names(vocabulary: str) -> set[str]:
    """Every name the app would encode for `vocabulary` (synonyms and presets expanded), lower-cased."""
    return {p.lower() for spec in parse_vocabulary(vocabulary).classes for p in spec.prompts}


def changed_vocabulary(vocabulary: str, used: set[str]) -> str:
    """The vocabulary with one class more, one not in `used` (the names this run sends; the new one is
    added), so that the re-run encodes exactly one new name as a user's edit would: the app caches every
    name it has encoded."""
    extra = next((n for n in EXTRA_CLASSES if n not in class_names(vocabulary) | used), f"thing {len(used)}")
    used.add(extra)
    return f"{vocabulary}, {extra}"


def stage_seconds(result: dict[str, Any]) -> dict[str, float]:
    """Seconds per stage of one request, from the app's results JSON: proposals and text encoding are
    shared by the methods (each method's record repeats them); each method's own cost is its image
    encoding (the one pass, or the crops) plus classification."""
    timings = {name: m["timings"] for name, m in result["methods"].items()}
    stages = {"proposals": max(t["proposals"] for t in timings.values()),
              "text_encoding": max(t["text_encoding"] for t in timings.values())}
    stages.update({name: t["image_encoding"] + t["classification"] for name, t in timings.items()})
    return {k: round(v, 4) for k, v in stages.items()}


def load_cases(examples: str | Path) -> list[Case]:
    """The app's clickable examples: image paths in the file are relative to the folder above its own
    (``assets/examples.json`` names ``assets/chelsea.jpg``), as app.py reads them."""
    path = Path(examples)
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AppBenchError(f"cannot read the examples file {path}: {exc}") from None
    return [Case(str(path.resolve().parent.parent / e["image"]), e["vocabulary"]) for e in entries]


@dataclass
class AppRun:
    """What one measurement of an app found. status: the app's own status line after the warm-up (it names
    the models and the server's device), or None if the app has none."""

    url: str
    status: str | None
    records: list[AppRecord]

    @property
    def warnings(self) -> list[str]:
        """A "first" request the app answered from its cache (it had seen the image before, e.g. a
        long-running Space measured twice) is no first run: said, not silently averaged in."""
        return [f"{r.image}: the app reused {' and '.join(r.cached)} on the first request (it had seen this "
                "image before), so its 'first' time is not a first run; restart the app or send other images"
                for r in self.records if r.request == "first" and r.cached]


def measure(url: str, cases: Sequence[Case], method: str = "both", warm_up: bool = True,
            report: Callable[[AppRecord], None] = lambda record: None,
            options: dict[str, Any] | None = None) -> AppRun:
    """Time each case's two requests (after one warm-up request) against the app at `url`; `options` are
    more of the app's inputs by name (e.g. ``many_masks(30)``)."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    try:
        client = Client(url, verbose=False)
    except Exception as exc:  # connection refused, not a Gradio app, ...: one clear line
        raise AppBenchError(f"cannot connect to a Gradio app at {url}: {exc}") from None

    def request(kind: str, image: str, vocabulary: str) -> AppRecord:
        start, first_s, submitted = time.perf_counter(), None, time.time()
        try:
            job = client.submit(handle_file(image), vocabulary, method, api_name="/segment", **(options or {}))
            for _ in job:  # each streamed answer as it arrives
                first_s = time.perf_counter() - start if first_s is None else first_s
            out = job.result()
        except AppError as exc:
            raise AppBenchError(f"the app refused {Path(image).name} with {vocabulary!r}: {exc}") from None
        wall = time.perf_counter() - start
        server = _call(client, "/timings") or {}  # the app's record of this request (this project's, recent)
        files = out[4] or _call(client, "/downloads") or []  # made when asked, after the timed answer
        result_json = next((f for f in files if str(f).endswith(".json")), None)
        if result_json is None:
            raise AppBenchError(f"{url} returned no results JSON; is it this project's app?")
        result = json.loads(Path(result_json).read_text())
        first = next(iter(result["methods"].values()))
        stages = stage_seconds(result)
        first_s = round(first_s if first_s is not None else wall, 4)
        record = AppRecord(kind, Path(image).name, vocabulary, method, round(wall, 4),
                           round(sum(stages.values()), 4), list(first["cached"]), len(first["segments"]), stages,
                           first_s, server, outside_pipeline(server, first_s, wall, submitted))
        report(record)
        return record

    records = []
    used = class_names(WARM_UP_VOCABULARY).union(*(class_names(c.vocabulary) for c in cases))
    if warm_up:
        with tempfile.TemporaryDirectory() as tmp:
            records.append(request("warm-up", warm_up_image(tmp), WARM_UP_VOCABULARY))
    try:
        status = str(client.predict(api_name="/status"))
    except Exception:  # another app, or an older one: the status is a nicety
        status = None
    for case in cases:
        records.append(request("first", case.image, case.vocabulary))
        records.append(request("vocabulary change", case.image, changed_vocabulary(case.vocabulary, used)))
    return AppRun(url, status, records)


def warm_up_image(folder: str) -> str:
    """A synthetic image no case has (a first request on one of theirs would find its proposals cached),
    written in `folder`."""
    from PIL import Image

    from .measure import synthetic_image

    path = os.path.join(folder, "warm-up.png")
    Image.fromarray(synthetic_image(512, seed=7)).save(path)
    return path


def _call(client: Any, api_name: str) -> Any:
    """An endpoint of the app's session, or None where the app has none (another app, an older one)."""
    try:
        return client.predict(api_name=api_name)
    except Exception:
        return None


def outside_pipeline(server: dict[str, Any], first_s: float, wall_s: float,
                     submitted: float | None = None) -> dict[str, float]:
    """Where a request's time went besides the models, from the app's record (``deop.web.timings``) and the
    client's clock: ``decode``, ``checks``, ``render`` (each output as ``view <name>``), ``session``,
    ``gradio`` (post-processing and sending the answers), ``release``, all answers together; then
    ``client first``/``client``: the client's time to the first/complete answer that the handler did not
    spend (upload, queue, the HTTP round trips, and fetching the outputs' files); of it, ``before handler``
    (from `submitted`, the client's clock on the same machine, to the handler's start: upload and queue)."""
    if not server:
        return {}
    answers = server.get("answers", [])
    out: dict[str, float] = {k: float(server.get(k, 0.0)) for k in ("decode", "checks", "release")}
    for answer in answers:
        for k in ("render", "session", "gradio"):
            out[k] = out.get(k, 0.0) + answer.get(k, 0.0)
        for name, seconds in answer.get("views", {}).items():
            out[f"view {name}"] = out.get(f"view {name}", 0.0) + seconds
    spent = sum(out[k] for k in ("decode", "checks", "release", "render", "session", "gradio"))
    spent += sum(a.get("pipeline", 0.0) for a in answers)
    until_first = out["decode"] + out["checks"] + sum(answers[0].get(k, 0.0) for k in
                                                      ("pipeline", "render", "session", "gradio")) if answers else 0
    out["client first"], out["client"] = first_s - until_first, wall_s - spent
    if submitted is not None and "started" in server:
        out["before handler"] = server["started"] - submitted
    return {k: round(v, 4) for k, v in out.items()}


def answer_times(rows: Sequence[Any]) -> dict[str, Any]:
    """How many answers, the medians of the first and complete ones and the range of the latter: what the
    API's and the page's summaries share (a record without a first answer came whole)."""
    wall = [r.wall_s for r in rows]
    first = [r.first_s if r.first_s is not None else r.wall_s for r in rows]
    return {"n": len(rows), "wall_median_s": round(statistics.median(wall), 3), "wall_min_s": min(wall),
            "wall_max_s": max(wall), "first_median_s": round(statistics.median(first), 3)}


def wall_spread(summary: dict[str, Any]) -> str:
    """An ``answer_times`` complete answer as the tables print it: median (min-max)."""
    return f"{summary['wall_median_s']:.2f} s ({summary['wall_min_s']:.2f}-{summary['wall_max_s']:.2f})"


def summarise(records: Sequence[AppRecord]) -> dict[str, dict[str, Any]]:
    """Per kind of request: how many; the median, min and max of wall seconds; the median of pipeline
    seconds and of each stage's, and of the segment count."""
    out = {}
    for kind in REQUESTS:
        rows = [r for r in records if r.request == kind]
        if rows:
            pipe = [r.pipeline_s for r in rows]
            stages = {k: round(statistics.median(r.stages.get(k, 0.0) for r in rows), 3)
                      for k in dict.fromkeys(k for r in rows for k in r.stages)}
            outside = {k: round(statistics.median(r.outside.get(k, 0.0) for r in rows), 3)
                       for k in dict.fromkeys(k for r in rows for k in r.outside)}  # where the app has /timings
            out[kind] = {**answer_times(rows), "pipeline_median_s": round(statistics.median(pipe), 3),
                         "stage_median_s": stages, "segments_median": statistics.median(r.segments for r in rows)}
            if outside:
                out[kind]["outside_median_s"] = outside
    return out


def format_summary(summary: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'request':<18} {'n':>2}  {'first':<7} {'wall: median (min-max)':<26} {'pipeline':<9} stages (median)"]
    for kind, s in summary.items():
        spread = wall_spread(s)
        stages = ", ".join(f"{k.replace('_encoding', '')} {v:.2f}" for k, v in s["stage_median_s"].items())
        lines.append(f"{kind:<18} {s['n']:>2}  {s.get('first_median_s', s['wall_median_s']):<5.2f} s "
                     f"{spread:<26} {s['pipeline_median_s']:<7.2f} s {stages}")
        if s.get("outside_median_s"):
            lines.append(f"{'':<18}     outside the pipeline (median s): "
                         + ", ".join(f"{k} {v:.3f}" for k, v in s["outside_median_s"].items()))
    return "\n".join(lines)


# -- launching the app -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def launched(app: str | Path, app_args: Sequence[str] = (), timeout: float = 300.0) -> Iterator[str]:
    """Run ``python app.py`` on a free local port as a user would; yield its URL once it serves, stop it
    after. An app that exits first is reported with the end of its output."""
    app = Path(app)
    if not app.is_file():
        raise AppBenchError(f"no app at {app}; run from the repository root or pass --app PATH (or --url)")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, str(app), "--host", "127.0.0.1", "--port", str(port), *app_args]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
        try:
            _wait_until_serving(url, proc, timeout, log)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_until_serving(url: str, proc: subprocess.Popen, timeout: float, log) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            tail = log.read().decode(errors="replace").strip().splitlines()[-15:]
            raise AppBenchError(f"the app exited with code {proc.returncode} before serving:\n" + "\n".join(tail))
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise AppBenchError(f"the app did not serve {url} within {timeout:g} s")


def machine() -> dict[str, Any]:
    """This machine's facts: those of the server too when the app was launched here."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "gpu": gpu}
