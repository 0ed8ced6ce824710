"""Every place where the app reaches into Gradio's internals or replaces one of its behaviours, in one file.

Each entry names the Gradio behaviour it works around and the release it was written against
(``CHECKED_WITH``); ``tests/test_gradio_workarounds.py`` has, for each, a test that fails when a Gradio
release changes that behaviour, so that an upgrade says which entry to revisit (or delete). Nothing else
in the app touches a private Gradio name.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

import gradio as gr

from .files import ASSETS, MAX_FILE_SIZE, max_file_bytes

CHECKED_WITH = "6.31.0"  # the Gradio release each entry below was last checked against (requirements: >=6,<7)


def upload_folder() -> Path:
    """Where Gradio keeps uploads and its cache (``gradio.utils.get_upload_folder``: $GRADIO_TEMP_DIR, else
    <tmp>/gradio), read at request time."""
    return Path(gr.utils.get_upload_folder())


def raw_input(component: gr.components.Component) -> gr.components.Component:
    """Hand the handler the value exactly as the client sent it.

    Gradio 6.x: a component's ``preprocess`` coerces or fails with a generic error (a Checkbox passes the
    text ``"no"`` on, which is truthy; an integer Slider passes 10.7; a Slider given a text raises a bare
    TypeError), while ``deop.serving`` checks each input and names it. Gradio calls the instance's
    ``preprocess``, so replacing it per instance is enough; the API schema is the component's and stays."""
    component.preprocess = lambda payload: payload
    return component


def image_input(**kwargs) -> gr.Image:
    """An image upload whose file reaches ``deop.images.load_image`` unopened, and only if it is an upload.

    Gradio 6.x: stock gr.Image opens every upload with PIL before our code runs, so a non-image, a truncated
    file or a decompression bomb fails inside Gradio with a bare "Error"; our loader names the problem
    instead. And gr.Image takes ``{"path": ...}`` for any path on the server when the call carries no file
    metadata, so an API call could have the app open (and segment, and send back) a file that was never
    uploaded: only Gradio's upload folder and the example images are accepted. The override is per
    instance: a gr.Image subclass would make Gradio write a type-stub file next to this one at import time."""
    component = gr.Image(type="filepath", **kwargs)

    def preprocess(payload):
        if payload is None:
            return None
        if (payload.url or "").startswith("data:"):
            return data_url_file(payload.url)
        path = Path(payload.path or "").resolve()
        roots = (upload_folder().resolve(), ASSETS.resolve())
        if not payload.path or not any(path.is_relative_to(r) for r in roots):
            raise gr.Error("image: upload the file first (gradio_client.handle_file, or POST /gradio_api/upload) "
                           "and send the path the upload returned")
        return str(path)

    component.preprocess = preprocess
    return component


def data_url_file(url: str) -> str:
    """A ``data:`` URL's bytes as a file in Gradio's upload folder, for the package's loader to open like an
    upload. Gradio 6.x decodes a data: URL with PIL and re-encodes it before any check, past the upload size
    limit. The Janitor sweeps these files with the uploads."""
    limit = max_file_bytes()
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
    return upload_folder() / "data-urls"


def pad_missing_inputs(demo: gr.Blocks) -> None:
    """A raw API call may send only its first inputs (the README's three): the rest take the components'
    defaults, as gradio_client fills them.

    Gradio 6.x: ``Blocks.validate_inputs(block_fn, inputs)``, called first by ``Blocks.preprocess_data``,
    raises a ValueError for too few inputs, which the API shows as ``{"error": null}``."""
    stock = demo.validate_inputs

    def validate_inputs(block_fn, inputs):
        missing = block_fn.inputs[len(inputs):]
        inputs.extend(getattr(block, "value", None) for block in missing)
        return stock(block_fn, inputs)

    demo.validate_inputs = validate_inputs


def client_alive(demo: gr.Blocks) -> Callable[[], bool]:
    """A probe, made in the handler's own thread, that turns False once the request's client is gone
    (page closed, API client killed).

    Gradio 6.x marks the event dead (``Event.alive``) when its stream closes but never stops a running
    function, so without this an abandoned request holds the queue to the end. It reads the private
    ``demo._queue.event_ids_to_events`` and ``gradio.context.LocalContext.event_id``; where they are not
    found, the client counts as present."""
    try:
        from gradio.context import LocalContext

        event = demo._queue.event_ids_to_events.get(LocalContext.event_id.get(None))
    except Exception:  # another Gradio version: degrade to "always there"
        event = None
    return (lambda: bool(event.alive)) if event is not None else (lambda: True)


@contextmanager
def examples_cache(folder: Path):
    """Gradio 6.x reads the examples' cache folder from $GRADIO_EXAMPLES_CACHE when an Examples block is made
    (``gradio.utils.get_cache_folder``); each model configuration gets its own, so that examples cached with
    random weights are never served with real ones."""
    old = os.environ.get("GRADIO_EXAMPLES_CACHE")
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("GRADIO_EXAMPLES_CACHE", None)
        else:
            os.environ["GRADIO_EXAMPLES_CACHE"] = old


EXAMPLE_EVENT = "load_example_output"  # the name Gradio 6.x gives the function of a lazily cached example


def example_events(demo: gr.Blocks) -> list:
    """The events that run a lazily cached example's function: Gradio 6.x registers them itself, under the
    function name ``load_example_output``, outside any concurrency group we pass."""
    return [f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == EXAMPLE_EVENT]


def example_copies(paths: Iterable[Path]) -> list[Path]:
    """Where Gradio 6.x keeps the copies of example files that the page links to: the upload folder, a folder
    named by ``gradio.processing_utils.hash_file`` of the file, and the file's name (the Janitor must spare
    them)."""
    from gradio.processing_utils import hash_file

    return [upload_folder() / hash_file(p) / Path(p).name for p in paths]


def atomic_image_cache() -> None:
    """Make Gradio write rendered images into its cache atomically (temporary file, then rename).

    Gradio 6.x names each cached image by the hash of its bytes but ``save_pil_to_cache`` (used for arrays,
    PIL images and annotation masks) rewrites the file in place on every save, so when two requests render
    an identical image (same photo and vocabulary), the second truncates a file the first client may still
    be downloading, and that download fails ("Too little data for declared Content-Length"; seen in the
    burst test). Gradio's own ``save_file_to_cache`` already renames into place; this gives
    ``save_pil_to_cache`` the same behaviour, at the same path. Idempotent; the stock function stays
    reachable as ``save_pil_to_cache.stock``."""
    from gradio import processing_utils as pu

    if getattr(pu.save_pil_to_cache, "atomic", False):
        return
    stock = pu.save_pil_to_cache

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
    save_pil_to_cache.stock = stock
    pu.save_pil_to_cache = save_pil_to_cache
