"""Gradio front end: layout and wiring only; everything it shows comes from the deop package.

The Advanced panel's widgets, the /segment handler's parameters and the order of its API inputs are
generated from the option descriptions in ``deop.config`` (``APP_OPTIONS``), its outputs are named in
``deop.ui.SEGMENT_OUTPUTS``, and what a public server needs (bounded sessions, temp-file clean-up, strict
input checks, cost estimates) is ``deop.serving``'s. What is here is what only Gradio can do: components,
events, the client-gone probe, and ZeroGPU's decorator.
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import inspect
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from deop import explore, serving, ui
from deop.arguments import add_model_arguments, add_option_arguments, config_from_args, env_default
from deop.config import APP_OPTIONS, Option, SegmenterConfig, is_number, option_value, request_options
from deop.errors import USER_ERRORS, DeopError, OptionError, internal_error
from deop.images import load_image, resize_max_side
from deop.methods import METHOD_CHOICES
from deop.models import RANDOM_WEIGHTS_WARNING
from deop.pipeline import Segmenter
from deop.presets import PRESET_TITLES, PRESETS
from deop.vocabulary import Vocabulary, parse_vocabulary

ROOT = Path(__file__).resolve().parent
ASSETS = ROOT / "assets"
log = logging.getLogger("deop.app")
CLICK_HINT = "Click a segment in the image above, or a class in an overlay's legend, to see its top-5 classes."
EXPIRED = ("This result is no longer kept on the server (it keeps the latest ones, for an hour); press Segment "
           "again.")
HINT = ("Classes separated by commas or new lines. Synonyms: a line `person: man, woman, child` is one class. "
        "Presets: `@voc`, `@coco`, `@ade20k`, `@cityscapes`.")
MAX_FILE_SIZE = "25mb"
MAX_ADDED = 20  # segments added by clicks that one session keeps (each holds a mask and SAM logits)
NO_IMAGE = "Upload an image first (or click an example)."
RUN = "Segment"
CLICK_MODES = ("inspect", "add a segment", "refine the last added (-)")
# The vocabulary box's edits, debounced in the browser: a hidden box takes the text 0.6 s after the last
# keystroke, and its change runs the cached re-run once (Gradio has no debounce of its own).
DEBOUNCE = """(text, last) => new Promise(resolve => {
  const me = (window.__deop_typing = (window.__deop_typing || 0) + 1);
  setTimeout(() => resolve(me === window.__deop_typing ? text : (last ?? "")), 600);
})"""


def work_dir() -> Path:
    """This app's own folder for uploads, Gradio's cache, results and the examples' cache: $DEOP_APP_DIR,
    else a folder of this user's in the system temp directory, not the machine-wide /tmp/gradio that every
    Gradio app on the host shares (and whose files any of them serves to whoever knows a path)."""
    given = os.environ.get("DEOP_APP_DIR")
    uid = os.getuid() if hasattr(os, "getuid") else None  # no uids on Windows
    folder = Path(given or Path(tempfile.gettempdir()) / (f"deop-app-{uid}" if uid is not None else "deop-app"))
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:  # a file, or a dangling link, of that name
        raise OptionError(f"cannot make the app's folder {folder}: {exc.strerror or exc}; remove it or set "
                          "DEOP_APP_DIR to a folder of your own") from None
    if not given and uid is not None:  # a shared temp folder: another user may have made this name first
        st = folder.lstat()
        if folder.is_symlink() or st.st_uid != uid or st.st_mode & 0o077:
            raise OptionError(f"the app's folder {folder} is not this user's own (owner uid {st.st_uid}, mode "
                              f"{st.st_mode & 0o777:o}); remove it or set DEOP_APP_DIR to a folder of your own")
    return folder


def raw_input(component: gr.components.Component) -> gr.components.Component:
    """Hand the handler the value exactly as the client sent it: Gradio's own preprocessing coerces
    (``"no"`` stays a truthy checkbox, 10.7 passes an integer slider, None becomes the class "None") or
    fails with a generic error, while ``deop.serving`` checks each input and names it. The API schema is
    the component's and stays as it was."""
    component.preprocess = lambda payload: payload
    return component


def image_input(**kwargs) -> gr.Image:
    """An image upload whose file reaches ``deop.images.load_image`` unopened, and only if it is an upload.

    Stock gr.Image opens every upload with PIL before our code runs, so a non-image, a truncated file or a
    decompression bomb fails inside Gradio with a bare "Error"; our loader names the problem instead. And
    gr.Image takes ``{"path": ...}`` for any path on the server when the call carries no file metadata, so
    an API call could have the app open (and segment, and send back) a file that was never uploaded: only
    Gradio's upload folder and the example images are accepted. The override is per instance: a gr.Image
    subclass would make Gradio write a type-stub file next to this one at import time."""
    component = gr.Image(type="filepath", **kwargs)

    def preprocess(payload):
        if payload is None:
            return None
        if (payload.url or "").startswith("data:"):
            return data_url_file(payload.url)
        path = Path(payload.path or "").resolve()
        roots = (Path(gr.utils.get_upload_folder()).resolve(), ASSETS.resolve())
        if not payload.path or not any(path.is_relative_to(r) for r in roots):
            raise gr.Error("image: upload the file first (gradio_client.handle_file, or POST /gradio_api/upload) "
                           "and send the path the upload returned")
        return str(path)

    component.preprocess = preprocess
    return component


def data_url_file(url: str) -> str:
    """A ``data:`` URL's bytes as a file in Gradio's upload folder, for the package's loader to open like an
    upload: Gradio's own handling decodes it with PIL and re-encodes it before any check, past the upload
    size limit. The Janitor sweeps these files with the uploads."""
    limit = _bytes(MAX_FILE_SIZE)
    header, _, data = url.partition(",")
    if len(data) > limit * 4 // 3 + 4:
        raise gr.Error(f"image: the data: URL is over the {MAX_FILE_SIZE} upload limit")
    try:
        if not header.endswith(";base64"):
            raise ValueError(header)
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        raise gr.Error("image: the data: URL is not a base64-encoded image") from None
    folder = data_url_folder()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(raw).hexdigest()[:32]}.img"  # the same image, the same path: it re-runs
    if not path.exists():
        fd, staging = tempfile.mkstemp(dir=folder, prefix=".image-")
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(staging, path)
    return str(path)


def data_url_folder() -> Path:
    return Path(gr.utils.get_upload_folder()) / "data-urls"


def _bytes(size: str) -> int:
    return int(size.removesuffix("mb")) * 2**20


def option_widget(option: Option, value: Any) -> gr.components.Component:
    """The widget an option's description asks for, showing `value`."""
    w = option.meta.widget
    if w.kind == "slider":
        widget = gr.Slider(w.minimum, w.maximum, value=value, step=w.step, label=w.label, info=w.info)
    elif w.kind == "dropdown":
        widget = gr.Dropdown(option.choices, value=value, label=w.label, info=w.info)
    elif w.kind == "checkbox":
        widget = gr.Checkbox(value=value, label=w.label, info=w.info)
    else:
        raise ValueError(f"option {option.name} asks for an unknown widget kind {w.kind!r}")
    return raw_input(widget)


def with_signature(fn: Callable, names: list[str], defaults: dict[str, Any], progress: bool = True) -> Callable:
    """A handler taking ``(values: dict, progress)`` given the named parameters Gradio's API shows (and
    gradio_client's keyword arguments use), in the order of the event's inputs; generators stay generators."""
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                default=defaults.get(n, inspect.Parameter.empty)) for n in names]
    if progress:
        params.append(inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=gr.Progress()))

    if inspect.isgeneratorfunction(fn):
        def handler(*args, progress=None):
            yield from fn(dict(zip(names, args)), progress)
    else:
        def handler(*args, progress=None):
            return fn(dict(zip(names, args)), progress)

    handler.__signature__ = inspect.Signature(params)
    handler.__name__ = fn.__name__
    return handler


def user_errors(fn: Callable) -> Callable:
    """Our own errors become a message naming the problem; anything else is a bug: logged with its
    traceback on the server and shown only as an internal error with an id to quote, never a traceback
    or Gradio's generic "Error"."""
    def convert(exc: Exception) -> gr.Error:
        if isinstance(exc, gr.Error):
            return exc
        if isinstance(exc, USER_ERRORS):
            return gr.Error(str(exc))
        return gr.Error(internal_error(exc, log, fn.__name__))

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                raise convert(exc) from None
    else:
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                raise convert(exc) from None
    return wrapped


def client_alive(demo: gr.Blocks) -> Callable[[], bool]:
    """A probe, made in the handler's own thread, that turns False once the request's client is gone
    (page closed, API client killed): Gradio marks the event dead when its stream closes but never stops
    a running function, so without this an abandoned request holds the queue to the end. Gradio's queue
    is private API; where it is not found, the client counts as present."""
    try:
        from gradio.context import LocalContext

        event = demo._queue.event_ids_to_events.get(LocalContext.event_id.get(None))
    except Exception:  # another Gradio version: degrade to "always there"
        event = None
    return (lambda: bool(event.alive)) if event is not None else (lambda: True)


def on_gpu(fn: Callable, duration: Callable[..., float] | float) -> Callable:
    """ZeroGPU's ``@spaces.GPU`` (a GPU attached for the call, `duration` seconds, or asked from the inputs)
    when the ``spaces`` package is installed; outside a ZeroGPU Space it returns the function unchanged.

    On ZeroGPU the decorated function runs in a forked worker process, its arguments and results pickled:
    so only pure computations are decorated (arrays and options in, results out), never a handler, whose
    session bookkeeping would stay in the worker and be lost to the next request. What the worker caches
    (proposals, features) helps the next call that lands on it; a call that lands elsewhere recomputes."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)


def pad_missing_inputs(demo: gr.Blocks) -> None:
    """A raw API call may send only its first inputs (the README's three): the rest take the components'
    defaults, as gradio_client fills them, instead of failing with an error Gradio hides."""
    stock = demo.validate_inputs

    def validate_inputs(block_fn, inputs):
        missing = block_fn.inputs[len(inputs):]
        inputs.extend(getattr(block, "value", None) for block in missing)
        return stock(block_fn, inputs)

    demo.validate_inputs = validate_inputs


@contextmanager
def examples_cache(folder: Path):
    """Gradio reads the examples' cache folder from the environment when an Examples block is made; each
    model configuration gets its own, so that examples cached with random weights are never served with
    real ones."""
    old = os.environ.get("GRADIO_EXAMPLES_CACHE")
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("GRADIO_EXAMPLES_CACHE", None)
        else:
            os.environ["GRADIO_EXAMPLES_CACHE"] = old


def atomic_image_cache() -> None:
    """Make Gradio write rendered images into its cache atomically (temporary file, then rename).

    Gradio names each cached image by the hash of its bytes but rewrites the file in place on every save,
    so when two requests render an identical image (same photo and vocabulary), the second truncates a
    file the first client may still be downloading, and that download fails ("Too little data for
    declared Content-Length"; seen in the burst test). Gradio's own ``save_file_to_cache`` already
    renames into place; this gives ``save_pil_to_cache`` (used for arrays, PIL images and annotation
    masks) the same behaviour. Idempotent."""
    from gradio import processing_utils as pu

    if getattr(pu.save_pil_to_cache, "atomic", False):
        return

    def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
        data = pu.encode_pil_to_bytes(img, format)
        folder = Path(cache_dir) / pu.hash_bytes(data)
        folder.mkdir(exist_ok=True, parents=True)
        path = (folder / f"{name}.{format}").resolve()
        fd, staging = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(staging, path)
        return str(path)

    save_pil_to_cache.atomic = True
    pu.save_pil_to_cache = save_pil_to_cache


@dataclass
class AppParts:
    """What a built app holds besides its Blocks: the models, the session store, the temp-file janitor."""

    segmenter: Segmenter
    loader: ui.ModelLoader
    sessions: serving.SessionStore
    janitor: serving.Janitor
    folder: Path


def build_app(config: SegmenterConfig, time_limit: float | None = 300.0, queue_size: int = 16,
              calibrate: bool = True, session_bytes: int = 192 * 2**20, folder: Path | None = None) -> gr.Blocks:
    """The app. `calibrate`: measure this device's costs after loading, to refuse up front a request that
    cannot fit `time_limit`; `session_bytes`: what all sessions' views may hold together; `folder`: this
    app's files (``work_dir()`` by default)."""
    atomic_image_cache()
    folder = Path(folder or work_dir())
    zero_gpu = bool(os.environ.get("SPACES_ZERO_GPU"))  # no CUDA outside a @spaces.GPU call: nothing to calibrate
    segmenter = Segmenter(config)
    loader = ui.ModelLoader(segmenter, (lambda s: serving.calibrate(s, config.options))
                            if calibrate and not zero_gpu else None).start()
    models = ui.proposal_models(segmenter)
    segmenters = ui.SegmenterPool(segmenter, [kind for _, kind in models])
    sessions = serving.SessionStore(session_bytes)

    # The model work, and only it, behind ZeroGPU's decorator (see on_gpu). Progress and the client-gone
    # probe cannot cross into a ZeroGPU worker (ZeroGPU enforces its own duration); elsewhere they apply.
    def stream_on_gpu(model: str, work, vocabulary, method: str, opts, input_size, progress=None, cancelled=None):
        yield from segmenters.get(model).stream(work, vocabulary, method, options=opts, timeout=time_limit,
                                                progress=progress, cancelled=cancelled, input_size=input_size)

    def add_on_gpu(model: str, work, vocabulary: str, points, opts, previous, cancelled=None):
        return explore.add_segment(segmenters.get(model), work, vocabulary, points, opts, previous=previous,
                                   timeout=time_limit, cancelled=cancelled)

    def compare_on_gpu(model: str, work, vocabulary: str, opts, input_size, cancelled=None):
        yield from explore.compare_variants(segmenters.get(model), work, vocabulary, opts, input_size=input_size,
                                            timeout=time_limit, cancelled=cancelled)

    def relabel_on_gpu(model: str, work, vocabulary, added: list, opts) -> list:
        seg = segmenters.get(model)
        return [explore.relabel(seg, work, vocabulary, a, opts) for a in added]

    def stream_seconds(model, work, vocabulary, method, opts, *args, **kwargs) -> float:
        points = opts.proposals.points_per_side
        return min(120.0, 15.0 + 0.01 * float(points) ** 2 + (15.0 if method in ("crop", "both") else 0))

    stream_on_gpu = on_gpu(stream_on_gpu, stream_seconds)
    add_on_gpu, compare_on_gpu, relabel_on_gpu = (on_gpu(add_on_gpu, 30), on_gpu(compare_on_gpu, 90),
                                                  on_gpu(relabel_on_gpu, 30))

    def local(fn: Callable) -> Callable | None:
        """A probe or callback for the computation, or None where it would have to cross into a ZeroGPU worker."""
        return None if zero_gpu else fn

    def client_gone() -> Callable[[], bool] | None:
        """This request's probe for its client having left (read while the request runs), made local."""
        alive = client_alive(demo)
        return local(lambda: not alive())

    results = folder / "results"
    uploads = Path(gr.utils.get_upload_folder())
    ours = uploads.resolve().is_relative_to(folder.resolve())
    if not ours:  # another app's files may be there too
        log.warning("Gradio's upload folder %s is outside the app's folder %s and is not cleaned; set "
                    "GRADIO_TEMP_DIR inside it (python app.py does)", uploads, folder)
    janitor = serving.Janitor([results, uploads if ours else data_url_folder()])  # the data: URLs' files are ours
    options = [request_options()[name] for name in APP_OPTIONS]
    defaults = {"vocabulary": "cat, sofa, wall, blanket", "method": "both", "proposal_model": config.sam_kind,
                **{o.name: option_value(config.options, o.name) for o in options}}
    checks = serving.request_inputs(defaults, [kind for _, kind in models])
    examples = json.loads((ASSETS / "examples.json").read_text())

    def checked(values: dict[str, Any]) -> dict[str, Any]:
        """Every input typed and in range, or an OptionError naming the first one that is not."""
        return {c.name: c.check(values[c.name]) for c in checks}

    def validate(values: dict[str, Any], progress=None) -> list:
        """Before the queue: each bad input is named beside its widget (and in the API's error), so that
        no request with a wrong value ever waits in line."""
        out = [gr.validate(values["image"] is not None, NO_IMAGE)]
        for c in checks:
            try:
                c.check(values[c.name])
                out.append(gr.validate(True, ""))
            except OptionError as exc:
                out.append(gr.validate(False, str(exc)))
        return out + [gr.validate(True, "")]  # the session's state

    labels_stage = {"vocabulary", *(o.name for o in options if o.meta.stage == "labels")}

    def request_settings(request: dict[str, Any]) -> tuple[Segmenter, Any]:
        """The proposal model a request (checked inputs, or a session's kept ones) asked for, and its options."""
        seg = segmenters.get(request["proposal_model"])
        return seg, seg.config.options.with_overrides(**{o.name: request[o.name] for o in options})

    def outputs(views: dict[str, Any], result, token: str, note: str = "") -> list:
        crop = views["crop"]
        button = gr.skip() if note else gr.update(value=RUN)  # a cached re-run leaves pending settings pending
        return [views["one_pass"], gr.update(value=crop, visible=crop is not None or bool(result.pending)),
                views["latency"], views["chart"], views["files"],
                gr.update(choices=views["heatmap_classes"], value=views["heatmap_classes"][0]), views["inspect"],
                note + ui.run_status(result), CLICK_HINT, token, button]

    def pipeline(values: dict[str, Any], progress, note: str = "", view: serving.SessionView | None = None):
        """The request, streamed: the first method's answer, then each further one; the session keeps the
        last (its token in the browser's state). With the session's `view` (a cached re-run), its working
        image is used instead of the upload, and the segments added by clicks are kept, relabelled."""
        gone = client_gone()
        v = checked(values)
        if values["image"] is None:
            raise gr.Error(NO_IMAGE)
        loader.ready.wait()
        if loader.error:
            raise gr.Error(loader.error)
        seg, opts = request_settings(v)
        if view is not None:  # not the upload again: it may be gone (swept after an hour) or 48 MP to decode
            work, input_size = view.image, view.result.image_size
        else:
            image = load_image(values["image"], display_name=Path(str(values["image"])).name)
            input_size = image.shape[:2]
            work = resize_max_side(image, opts.max_side)  # all the session keeps; full size only for downloads
            del image
        vocabulary = parse_vocabulary(v["vocabulary"])
        sam_input = seg.proposer_spec.input_size_for(opts.proposals.sam_input_size)  # MobileSAM: always 1024
        serving.check_cost(loader.costs, work.shape[:2], {**v, "sam_input_size": sam_input,
                                                          "crop_n_layers": opts.proposals.crop_n_layers},
                           seg.text_cache.missing(seg.clip, vocabulary, opts.templates), time_limit)
        janitor.maybe_sweep()
        token = values.get("state") if sessions.get(values.get("state")) is not None else None
        report = (lambda f, d: progress(f, desc=d)) if progress is not None else None
        request = {**v, "image": values["image"]}
        kept = view.extra.get("added", []) if view is not None else []
        added = None  # the kept segments relabelled, once: every streamed result has the same vocabulary
        try:
            for result in stream_on_gpu(v["proposal_model"], work, vocabulary, v["method"], opts, input_size,
                                        progress=local(report), cancelled=gone):
                views = ui.segment_views(work, result, results)
                if added is None:
                    added = relabel_on_gpu(v["proposal_model"], work, vocabulary, kept, opts) if kept else []
                if added:
                    views["one_pass"] = (work, ui.annotations(result, result.primary, added))
                token = sessions.put(serving.SessionView(work, result, request, {"added": added}), token)
                yield outputs(views, result, token, note)
        finally:
            serving.release_memory()

    @user_errors
    def segment(values: dict[str, Any], progress):
        yield from pipeline(values, progress)

    def edits(values: dict[str, Any], view: serving.SessionView | None) -> tuple[list[str], list[str]]:
        """What differs from the session's last request: (edits the caches answer, edits that need new
        proposals or features)."""
        if view is None:
            return [], []
        old = view.request
        changed = [name for name in old if name in values and values[name] != old[name]]
        return [n for n in changed if n in labels_stage], [n for n in changed if n not in labels_stage]

    @user_errors
    def rerun(values: dict[str, Any], progress):
        """An edit of the vocabulary, threshold, fill option or templates on a segmented image runs again
        by itself, from the cached proposals and features; an edit that needs new ones waits for the
        button, which says so."""
        view = sessions.get(values.get("state"))
        cheap, costly = edits(values, view)
        if view is None or not isinstance(values.get("vocabulary"), str) or not values["vocabulary"].strip():
            yield [gr.skip()] * len(segment_outputs)
            return
        if costly:  # said in the status line too, which an API client reads
            said = (f"Not re-run: {', '.join(n.replace('_', ' ') for n in costly)} changed, which needs new "
                    f"proposals or features; press {RUN} (API: /segment).")
            yield [gr.skip()] * len(ui.SEGMENT_OUTPUTS) + [said, gr.skip(), gr.skip(),
                                                           gr.update(value=stale_label(costly))]
            return
        if not cheap:
            yield [gr.skip()] * len(segment_outputs)
            return
        what = ", ".join(n.replace("_", " ") for n in cheap)
        yield from pipeline(values, progress, note=f"Cached re-run ({what} changed). ", view=view)

    def stale_label(costly: list[str]) -> str:
        return RUN + " (new " + ("image" if "image" in costly else "settings") + ": press to run SAM and CLIP again)" \
            if costly else RUN

    def stale(values: dict[str, Any]):
        """A setting that needs new proposals or features changed: the button says it will run them."""
        view = sessions.get(values.get("state"))
        return gr.update(value=stale_label(edits(values, view)[1] if view is not None else []))

    @user_errors
    def example(image, vocabulary):
        """An example's answer as Gradio caches it (lazily: the first visitor pays, later ones get it at
        once): plain values only, no session (pressing Segment makes one)."""
        *_, last = pipeline({**defaults, "image": image, "vocabulary": vocabulary}, None)
        left, crop, latency, chart, files, _, view, status, _, token, _ = last
        sessions.drop(token)
        return [left, crop["value"] or left, latency, chart, files, view, status]

    @user_errors
    def heatmap(class_name, token):
        view = sessions.get(token)
        return None if view is None else ui.heatmap_for(view.image, view.result, class_name)

    @user_errors
    def click_legend(token, evt: gr.SelectData):
        """A click on a legend entry of the overlay (Gradio reports the annotation's index and label)."""
        view = sessions.get(token)
        if view is None:
            return EXPIRED if token else "Segment an image first."
        label = evt.value.get("label") if isinstance(evt.value, dict) else evt.value
        return ui.class_segments(view.result, str(label), added=view.extra.get("added", ()))

    def click_at(token: Any, x: Any, y: Any, mode: Any) -> list:
        """A click on the inspector (or /add_segment): inspect what is there, or add a segment at (x, y)
        from the cached embedding, or refine the last added one with a negative point."""
        view = sessions.get(token)
        if view is None:
            return [gr.skip(), EXPIRED if token else "Segment an image first.", gr.skip()]
        for name, value in (("x", x), ("y", y)):
            if not is_number(value):
                raise OptionError(f"{name} must be a pixel position (a number), got {value!r}")
        if mode not in CLICK_MODES:
            raise OptionError(f"mode must be one of {', '.join(CLICK_MODES)}; got {mode!r}")
        x, y, result = int(x), int(y), view.result
        h, w = view.image.shape[:2]
        if not (0 <= x < w and 0 <= y < h):
            raise OptionError(f"the point ({x}, {y}) lies outside the {w} x {h} image")
        added = view.extra.setdefault("added", [])
        picture = ui.inspect_view(view.image, result)
        on_added = ui.added_under(added, x, y)
        covered = on_added is not None or ui.segment_under(result, x, y) is not None
        if mode == CLICK_MODES[0] and covered:
            if on_added is not None:
                seg = added[on_added]
                return [ui.render_highlight(picture, seg.mask), ui.added_markdown(seg, on_added, result.classes),
                        gr.skip()]
            return [ui.highlight_at(picture, result, x, y), ui.segment_at(result, x, y), gr.skip()]
        if mode == CLICK_MODES[2] and not added:
            return [gr.skip(), "Add a segment first (click an uncovered pixel, or choose \"add a segment\").",
                    gr.skip()]
        if mode != CLICK_MODES[2] and len(added) >= MAX_ADDED:
            return [gr.skip(), f"At most {MAX_ADDED} added segments per image: refine the last one, or press "
                               f"{RUN} to start again.", gr.skip()]
        loader.ready.wait()
        _, opts = request_settings(view.request)
        refine = mode == CLICK_MODES[2]
        points = [*added[-1].points, (x, y, False)] if refine else [(x, y, True)]
        new = add_on_gpu(view.request["proposal_model"], view.image, view.request["vocabulary"], points, opts,
                         added[-1] if refine else None, cancelled=client_gone())
        if refine:
            added[-1] = new
        else:
            added.append(new)
        sessions.put(view, token)  # its size grew
        left = (view.image, ui.annotations(result, result.primary, added))
        return [ui.render_highlight(picture, new.mask), ui.added_markdown(new, len(added) - 1, result.classes, refine),
                left]

    @user_errors
    def click_pixel(token, mode, evt: gr.SelectData):
        """A click on the inspector image: Gradio reports the pixel position in the image's own size."""
        if not isinstance(evt.index, (list, tuple)):
            return [gr.skip(), "Click on the image.", gr.skip()]
        return click_at(token, evt.index[0], evt.index[1], mode)

    @user_errors
    def add_segment_api(x, y, mode, token):
        return click_at(token, x, y, mode)

    @user_errors
    def compare(token):
        """Every severance variant on the session's proposals, one at a time (DeOP's first)."""
        view = sessions.get(token)
        if view is None:
            yield [gr.skip(), EXPIRED if token else "Segment an image first."]
            return
        loader.ready.wait()
        _, opts = request_settings(view.request)
        runs = []
        for run in compare_on_gpu(view.request["proposal_model"], view.image, view.request["vocabulary"], opts,
                                  view.result.image_size, cancelled=client_gone()):
            runs.append(run)
            gallery, table = ui.variant_views(view.image, runs, view.result.classes)
            yield [gallery, table]

    with gr.Blocks(title="DeOP open-vocabulary segmentation", delete_cache=(600, 3600)) as demo:
        gr.Markdown("# DeOP: open-vocabulary segmentation in one CLIP pass\n"
                    "Segment Anything proposes masks; CLIP runs **once** over the whole image "
                    "([DeOP, ICCV 2023](https://arxiv.org/abs/2305.01573)) and each mask is classified from the "
                    "dense map. The crop baseline (one CLIP pass per mask) runs on the same masks for comparison.")
        if config.random_weights:
            gr.HTML(f'<div id="random-banner" style="background:#c62828;color:white;padding:8px;'
                    f'border-radius:6px;font-weight:bold">{RANDOM_WEIGHTS_WARNING}</div>')
        status = gr.Markdown(loader.status(), elem_id="status")
        state = gr.State(None, time_to_live=3600, delete_callback=sessions.drop)
        with gr.Row():
            with gr.Column(scale=2):
                image = image_input(label="Image", sources=["upload", "clipboard", "webcam"])
                preset = gr.Dropdown([("(none)", "")] + [(PRESET_TITLES[k], k) for k in PRESETS],
                                     value="", label="Vocabulary preset")
                vocabulary = raw_input(gr.Textbox(label="Classes", value=defaults["vocabulary"], lines=3, info=HINT))
                method = raw_input(gr.Radio(list(METHOD_CHOICES), value="both", label="Method"))
                with gr.Accordion("Advanced", open=False):
                    proposal_model = raw_input(gr.Dropdown(models, value=config.sam_kind, label="Proposal model",
                                                           visible=len(models) > 1,
                                                           info="loaded on first use; same options for all"))
                    widgets = {o.name: option_widget(o, defaults[o.name]) for o in options}
                run = gr.Button(RUN, variant="primary", elem_id="run")
            with gr.Column(scale=3):
                run_status = gr.Markdown(elem_id="run-status")
                with gr.Row():
                    out_left = gr.AnnotatedImage(label="One pass (DeOP)", elem_id="one-pass")
                    out_right = gr.AnnotatedImage(label="Crop baseline", elem_id="crop")
                latency = gr.Markdown(elem_id="latency")
                chart = gr.Image(label="Latency per stage", interactive=False)
                with gr.Tabs():
                    with gr.Tab("Inspect a segment"):
                        click_mode = gr.Radio(list(CLICK_MODES), value=CLICK_MODES[0], label="A click on the image",
                                              info="inspect a segment, or add one where none is (from the cached "
                                                   "SAM embedding: no new encoder pass); refine the last added one "
                                                   "with a negative point", elem_id="click-mode")
                        inspect_view = gr.Image(label="Click a segment", interactive=False, elem_id="inspect")
                        clicked = gr.Markdown(CLICK_HINT, elem_id="clicked")
                    with gr.Tab("Compare variants"):
                        gr.Markdown("The same proposals classified by each training-free way of changing CLIP's "
                                    "last block (DeOP's patch severance, MaskCLIP, SCLIP, ClearCLIP, NACLIP, plain "
                                    "CLIP); each variant's dense map is cached, so a second look costs nothing.")
                        compare_button = gr.Button("Compare the severance variants")
                        variants = gr.Gallery(label="One overlay per variant", columns=3, object_fit="contain",
                                              height="auto", elem_id="variants")
                        variants_table = gr.Markdown(elem_id="variants-table")
                    with gr.Tab("Class heatmap"):
                        heat_class = gr.Dropdown([], label="Heatmap class")
                        heat = gr.Image(label="Class similarity heatmap", interactive=False)
                    with gr.Tab("Downloads"):
                        files = gr.File(label="Overlay, labels, per-class masks, JSON (segments as COCO RLE)",
                                        file_count="multiple")
        with gr.Row(visible=False):  # /add_segment's inputs for API clients (the page clicks the inspector)
            add_x, add_y = (raw_input(gr.Number(label=n, precision=None)) for n in ("x", "y"))
            add_mode = gr.Radio(list(CLICK_MODES), value=CLICK_MODES[1], label="mode")
            add_button = gr.Button("add")
            debounced = gr.Textbox()  # the vocabulary, once typing has paused
        digest = hashlib.sha256(repr((config, defaults)).encode()).hexdigest()[:16]
        with examples_cache(folder / "examples" / digest):
            gr.Examples([[str(ROOT / e["image"]), e["vocabulary"]] for e in examples], [image, vocabulary],
                        [out_left, out_right, latency, chart, files, inspect_view, run_status],
                        fn=example, cache_examples=True, cache_mode="lazy")

        inputs = {"image": image, "vocabulary": vocabulary, "method": method, **widgets,
                  "proposal_model": proposal_model}
        names = [*inputs, "state"]  # the state is the session's token; API clients do not send it
        defaults["state"] = None
        view_outputs = {"one_pass": out_left, "crop": out_right, "latency": latency, "chart": chart, "files": files,
                        "heatmap_classes": heat_class, "inspect": inspect_view}
        segment_outputs = [*(view_outputs[n] for n in ui.SEGMENT_OUTPUTS), run_status, clicked, state, run]
        pipeline_events = {"concurrency_id": "pipeline"}  # one request at a time uses the models
        run.click(with_signature(segment, names, defaults), [*inputs.values(), state],
                  segment_outputs, api_name="segment", validator=with_signature(validate, names, defaults, False),
                  **pipeline_events)
        # Edits that the caches answer re-run by themselves: the vocabulary once typing pauses (debounced in
        # the browser), the threshold when its slider is let go, the fill option and templates when picked.
        rerun_handler = with_signature(rerun, names, defaults)
        vocabulary.input(None, [vocabulary, debounced], debounced, js=DEBOUNCE, trigger_mode="multiple",
                         queue=False)
        debounced.change(rerun_handler, [image, debounced, *list(inputs.values())[2:], state], segment_outputs,
                         api_name="rerun", **pipeline_events)
        for name, event in (("none_threshold", "release"), ("fill_uncovered", "input"), ("templates", "input")):
            getattr(widgets[name], event)(rerun_handler, [*inputs.values(), state], segment_outputs,
                                          api_visibility="private", **pipeline_events)
        private = {"api_visibility": "private"}
        preset.change(lambda p, v: Vocabulary.from_names(PRESETS[p]).to_text() if p else v, [preset, vocabulary],
                      vocabulary, **private).then(rerun_handler, [*inputs.values(), state], segment_outputs, **private,
                                       **pipeline_events)
        stale_handler = with_signature(lambda values, progress: stale(values), names, defaults, False)
        for name, component in inputs.items():
            if name not in labels_stage:
                component.change(stale_handler, [*inputs.values(), state], run, queue=False, **private)
        heat_class.change(heatmap, [heat_class, state], heat)
        out_left.select(click_legend, [state], clicked)
        out_right.select(click_legend, [state], clicked)
        clicked_views = [inspect_view, clicked, out_left]
        inspect_view.select(click_pixel, [state, click_mode], clicked_views, **pipeline_events)
        add_button.click(add_segment_api, [add_x, add_y, add_mode, state], clicked_views,
                         api_name="add_segment", **pipeline_events)
        compare_button.click(compare, [state], [variants, variants_table], api_name="compare_variants",
                             **pipeline_events)
        demo.load(loader.status, None, status)
        gr.Timer(2.0).tick(loader.status, None, status)
    pad_missing_inputs(demo)
    example_events = [f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "load_example_output"]
    for block_fn in example_events:  # the examples' lazy caching runs the models too: one at a time
        block_fn.concurrency_id = pipeline_events["concurrency_id"]
    if len(example_events) != 1:
        log.warning("found %d example events, not one: this Gradio names them otherwise, and lazily cached "
                    "examples may run beside a request", len(example_events))
    demo.deop = AppParts(segmenter, loader, sessions, janitor, folder)  # for tests and operators
    from gradio.processing_utils import hash_file  # where Gradio keeps the copies the page links to

    janitor.protect(uploads / hash_file(ROOT / e["image"]) / Path(e["image"]).name for e in examples)
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    return demo


# The latency table on a phone: no word broken inside ("classificati/on", "baselin/e"), stages on one line,
# numbers right-aligned (Gradio's styles override the markdown table's own alignment), cells a little tighter.
CSS = """
#latency th, #latency td { overflow-wrap: normal; word-break: normal; }
#latency td:first-child, #latency th:first-child { white-space: nowrap; }
#latency td:not(:first-child), #latency th:not(:first-child) { text-align: right; }
@media (max-width: 480px) { #latency th, #latency td { padding: 6px 8px; } }
#variants-table th, #variants-table td { overflow-wrap: normal; word-break: normal; }
#variants-table td { white-space: nowrap; }
@media (max-width: 480px) { #variants-table th, #variants-table td { padding: 6px 6px; } }
"""


def launch(demo: gr.Blocks, **kwargs):
    """Serve the app; besides its own outputs, Gradio may read files only from ``assets/`` (the examples);
    uploads above ``MAX_FILE_SIZE`` are refused with a message."""
    kwargs.setdefault("max_file_size", MAX_FILE_SIZE)
    return demo.launch(allowed_paths=[str(ASSETS)], css=CSS, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description="DeOP open-vocabulary segmentation demo")
    add_model_arguments(parser)
    add_option_arguments(parser, preset="fast")  # interactive use on a CPU: see PROPOSAL_PRESETS
    parser.add_argument("--port", type=int, default=env_default("GRADIO_SERVER_PORT", 7860, int),
                        help="port to serve on (default 7860; $GRADIO_SERVER_PORT)")
    parser.add_argument("--host", default=env_default("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (default 127.0.0.1; $GRADIO_SERVER_NAME, e.g. 0.0.0.0 on a Space)")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds per request (default 300)")
    parser.add_argument("--session-memory", type=int, default=192,
                        help="MB that all browser sessions' results may hold together (default 192); the least "
                             "recently used go first")
    args = parser.parse_args()
    # Gradio's uploads and cache in this app's own folder (read by Gradio from the environment).
    os.environ.setdefault("GRADIO_TEMP_DIR", str(work_dir() / "gradio"))
    launch(build_app(config_from_args(args), args.time_limit, session_bytes=args.session_memory * 2**20),
           server_name=args.host, server_port=args.port, share=args.share)


def run() -> None:
    """``python app.py``: a bad setting (a flag, $DEOP_*, $GRADIO_SERVER_PORT) is one line naming it and
    exit status 2, as in the CLI, not a traceback."""
    try:
        main()
    except DeopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run()
