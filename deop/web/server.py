"""The app's server: its state (models, sessions, janitor, loader, limits) and one method per endpoint.

Every handler takes and returns plain values (the request's inputs by name, a session token, Gradio's
``gr.update``/``gr.skip`` dictionaries for outputs), so each can be called and tested without building a
page; ``deop.web.events`` says which event calls which. The work on the models goes through
``deop.web.gpu`` (ZeroGPU's boundary); what the outputs show is ``deop.ui``'s, what a public server needs
``deop.serving``'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from .. import serving, ui
from ..config import APP_OPTIONS, SegmenterConfig, option_value, request_options
from ..errors import OptionError
from ..images import load_image, resize_max_side
from ..pipeline import Segmenter
from ..presets import PRESETS
from ..vocabulary import Vocabulary, parse_vocabulary
from . import gpu, texts
from .errors import user_errors
from .files import work_dir
from .questions import ResultQuestions
from .timings import RequestClock
from .workarounds import data_url_folder, upload_folder

log = logging.getLogger("deop.app")
MAX_ADDED = 20  # segments added by clicks that one session keeps (each holds a mask and SAM logits)
DEFAULT_VOCABULARY = "cat, sofa, wall, blanket"
# What /segment and /rerun return: the views of ``deop.ui.SEGMENT_OUTPUTS``, then the status line, the
# inspector's text, the session's token (kept in the browser; API clients do not see it) and the button.
SEGMENT_EVENT_OUTPUTS = (*ui.SEGMENT_OUTPUTS, "run_status", "clicked", "state", "run")


class Server(ResultQuestions):
    """The state one app serves from, and its handlers (those answered from a session's kept result, in
    ``ResultQuestions``). `calibrate`: measure this device's costs after
    loading, to refuse up front a request that cannot fit `time_limit`; `session_bytes`: what all sessions'
    views may hold together; `folder`: this app's files (``work_dir()`` by default)."""

    def __init__(self, config: SegmenterConfig, time_limit: float | None = 300.0, calibrate: bool = True,
                 session_bytes: int = 192 * 2**20, folder: Path | None = None) -> None:
        self.config = config
        self.time_limit = time_limit
        self.folder = Path(folder or work_dir())
        self.zero_gpu = gpu.zero_gpu()  # no CUDA outside a @spaces.GPU call: nothing to calibrate
        self.max_added = MAX_ADDED
        self.segmenter = Segmenter(config)
        calibration = (lambda s: serving.calibrate(s, config.options)) if calibrate and not self.zero_gpu else None
        self.loader = ui.ModelLoader(self.segmenter, calibration).start()
        self.models = ui.proposal_models(self.segmenter)  # (title, name), the configured one first
        self.pool = ui.SegmenterPool(self.segmenter, [kind for _, kind in self.models])
        self.compute = gpu.ModelWork(self.pool, time_limit)
        self.sessions = serving.SessionStore(session_bytes)
        self.results = self.folder / "results"  # the downloads, made when a visitor asks (Server.downloads)
        self.release = serving.MemoryRelease()
        self.janitor = serving.Janitor(self._swept_folders())
        self.options = [request_options()[name] for name in APP_OPTIONS]
        self.defaults = {"vocabulary": DEFAULT_VOCABULARY, "method": "both", "proposal_model": config.proposal_model,
                         **{o.name: option_value(config.options, o.name) for o in self.options}}
        self.checks = serving.request_inputs(self.defaults, [kind for _, kind in self.models])
        self.labels_stage = {"vocabulary", *(o.name for o in self.options if o.meta.stage == "labels")}
        # This request's "is the client still there?" probe; the built app sets it from its Blocks.
        self.client_probe: Callable[[], Callable[[], bool]] = lambda: (lambda: True)

    @property
    def input_names(self) -> list[str]:
        """/segment's inputs in API order (then the session's token, which API clients do not send)."""
        return ["image", "vocabulary", "method", *(o.name for o in self.options), "proposal_model"]

    def _swept_folders(self) -> list[Path]:
        uploads = upload_folder()
        ours = uploads.resolve().is_relative_to(self.folder.resolve())
        if not ours:  # another app's files may be there too
            log.warning("Gradio's upload folder %s is outside the app's folder %s and is not cleaned; set "
                        "GRADIO_TEMP_DIR inside it (python app.py does)", uploads, self.folder)
        return [self.results, uploads if ours else data_url_folder()]  # the data: URLs' files are ours

    def local(self, fn: Callable | None) -> Callable | None:
        """A probe or callback for the computation, or None where it would have to cross into a ZeroGPU worker."""
        return None if self.zero_gpu else fn

    def client_gone(self) -> Callable[[], bool] | None:
        """This request's probe for its client having left (read while the request runs), made local."""
        alive = self.client_probe()
        return self.local(lambda: not alive())

    # -- /segment, /rerun -------------------------------------------------------------------------------
    def checked(self, values: dict[str, Any]) -> dict[str, Any]:
        """Every input typed and in range, or an OptionError naming the first one that is not."""
        return {c.name: c.check(values[c.name]) for c in self.checks}

    def validate(self, values: dict[str, Any], progress=None) -> list:
        """Before the queue: each bad input is named beside its widget (and in the API's error), so that
        no request with a wrong value ever waits in line."""
        out = [gr.validate(values["image"] is not None, texts.NO_IMAGE)]
        for c in self.checks:
            try:
                c.check(values[c.name])
                out.append(gr.validate(True, ""))
            except OptionError as exc:
                out.append(gr.validate(False, str(exc)))
        return out + [gr.validate(True, "")]  # the session's state

    def request_settings(self, request: dict[str, Any]) -> tuple[Segmenter, Any]:
        """The proposal model a request (checked inputs, or a session's kept ones) asked for, and its options."""
        seg = self.pool.get(request["proposal_model"])
        return seg, seg.config.options.with_overrides(**{o.name: request[o.name] for o in self.options})

    def outputs(self, views: dict[str, Any], result, token: str, note: str = "") -> list:
        """A streamed result as the values of ``SEGMENT_EVENT_OUTPUTS``."""
        crop = views["crop"]
        button = gr.skip() if note else gr.update(value=texts.RUN)  # a cached re-run leaves pending settings pending
        return [views["one_pass"], gr.update(value=crop, visible=crop is not None or bool(result.pending)),
                views["latency"], views["chart"], views["files"],
                gr.update(choices=views["heatmap_classes"], value=views["heatmap_classes"][0]), views["inspect"],
                note + ui.run_status(result), texts.CLICK_HINT, token, button]

    def pipeline(self, values: dict[str, Any], progress, note: str = "",
                 view: serving.SessionView | None = None) -> Iterator[list]:
        """The request, streamed: the first method's answer, then each further one; the session keeps the
        last (its token in the browser's state). With the session's `view` (a cached re-run), its working
        image is used instead of the upload, and the segments added by clicks are kept, relabelled."""
        clock = RequestClock()
        gone = self.client_gone()
        v = self.checked(values)
        if values["image"] is None:
            raise gr.Error(texts.NO_IMAGE)
        self.loader.ready.wait()
        if self.loader.error:
            raise gr.Error(self.loader.error)
        seg, opts = self.request_settings(v)
        clock.lap("checks")
        if view is not None:  # not the upload again: it may be gone (swept after an hour) or 48 MP to decode
            work, input_size = view.image, view.result.image_size
        else:
            image = load_image(values["image"], display_name=Path(str(values["image"])).name)
            input_size = image.shape[:2]
            work = resize_max_side(image, opts.max_side)  # all the session keeps; full size only for downloads
            del image
        clock.lap("decode")
        vocabulary = parse_vocabulary(v["vocabulary"])
        sam_input = seg.proposer_spec.input_size_for(opts.proposals.sam_input_size)  # MobileSAM: always 1024
        serving.check_cost(self.loader.costs, work.shape[:2], {**v, "sam_input_size": sam_input,
                                                               "crop_n_layers": opts.proposals.crop_n_layers},
                           seg.text_cache.missing(seg.clip, vocabulary, opts.templates), self.time_limit)
        self.janitor.maybe_sweep()
        token = values.get("state") if self.sessions.get(values.get("state")) is not None else None
        report = (lambda f, d: progress(f, desc=d)) if progress is not None else None
        request = {**v, "image": values["image"]}
        kept = view.extra.get("added", []) if view is not None else []
        added = None  # the kept segments relabelled, once: every streamed result has the same vocabulary
        clock.lap("checks")
        try:
            for result in self.compute.stream(v["proposal_model"], work, vocabulary, v["method"], opts, input_size,
                                              progress=self.local(report), cancelled=gone):
                shown = clock.answer()
                clock.lap("pipeline", answer=True)
                views = ui.segment_views(work, result, record=shown)
                if added is None:
                    added = self.compute.relabel(v["proposal_model"], work, vocabulary, kept, opts) if kept else []
                if added:
                    views["one_pass"] = (work, ui.annotations(result, result.primary, added))
                clock.lap("render", answer=True)
                token = self.sessions.put(serving.SessionView(work, result, request, {"added": added,
                                                                                      "timings": clock}), token)
                clock.lap("session", answer=True)
                yield self.outputs(views, result, token, note)
                clock.lap("gradio", answer=True)
        finally:
            self.release()
            clock.lap("release")

    @user_errors
    def segment(self, values: dict[str, Any], progress=None) -> Iterator[list]:
        yield from self.pipeline(values, progress)

    def edits(self, values: dict[str, Any], view: serving.SessionView | None) -> tuple[list[str], list[str]]:
        """What differs from the session's last request: (edits the caches answer, edits that need new
        proposals or features)."""
        if view is None:
            return [], []
        old = view.request
        changed = [name for name in old if name in values and values[name] != old[name]]
        return [n for n in changed if n in self.labels_stage], [n for n in changed if n not in self.labels_stage]

    @user_errors
    def rerun(self, values: dict[str, Any], progress=None) -> Iterator[list]:
        """An edit of the vocabulary, threshold, fill option or templates on a segmented image runs again
        by itself, from the cached proposals and features; an edit that needs new ones waits for the
        button, which says so."""
        view = self.sessions.get(values.get("state"))
        cheap, costly = self.edits(values, view)
        if view is None or not isinstance(values.get("vocabulary"), str) or not values["vocabulary"].strip():
            yield [gr.skip()] * len(SEGMENT_EVENT_OUTPUTS)
            return
        if costly:
            yield [gr.skip()] * len(ui.SEGMENT_OUTPUTS) + [texts.not_rerun(costly), gr.skip(), gr.skip(),
                                                           gr.update(value=texts.run_label(costly))]
            return
        if not cheap:
            yield [gr.skip()] * len(SEGMENT_EVENT_OUTPUTS)
            return
        yield from self.pipeline(values, progress, note=texts.cached_rerun(cheap), view=view)

    def stale(self, values: dict[str, Any], progress=None) -> dict:
        """A setting that needs new proposals or features changed: the button says it will run them."""
        view = self.sessions.get(values.get("state"))
        return gr.update(value=texts.run_label(self.edits(values, view)[1] if view is not None else []))

    @user_errors
    def example(self, image, vocabulary) -> list:
        """An example's answer as Gradio caches it (lazily: the first visitor pays, later ones get it at
        once): plain values only, no session (pressing Segment makes one)."""
        *_, last = self.pipeline({**self.defaults, "image": image, "vocabulary": vocabulary}, None)
        left, crop, latency, chart, _, _, view, status, _, token, _ = last
        files = self.downloads(token)  # an example's downloads are cached with it: made here, once
        self.sessions.drop(token)
        return [left, crop["value"] or left, latency, chart, files, view, status]

    def preset_vocabulary(self, preset: str, vocabulary: str) -> str:
        """A vocabulary preset picked: its classes replace the box's text ("(none)" leaves it)."""
        return Vocabulary.from_names(PRESETS[preset]).to_text() if preset else vocabulary

    def status(self) -> str:
        return self.loader.status()

    def timings(self, token) -> dict | None:
        """Where the session's last request spent its time on the server (``RequestClock``), for
        ``python -m deop bench-app``; None without a session."""
        view = self.sessions.get(token)
        clock = view.extra.get("timings") if view is not None else None
        return clock.to_dict() if clock is not None else None
