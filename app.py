"""Gradio front end: layout and wiring only; everything it shows comes from the deop package.

The Advanced panel's widgets, the /segment handler's parameters and the order of its API inputs are
generated from the option descriptions in ``deop.config`` (``APP_OPTIONS``), and its outputs are named
in ``deop.ui.SEGMENT_OUTPUTS``, so an option is added in one place.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from deop import ui
from deop.arguments import add_model_arguments, add_option_arguments, config_from_args, env_default
from deop.config import APP_OPTIONS, Option, SegmenterConfig, option_value, request_options
from deop.errors import USER_ERRORS, internal_error
from deop.images import load_image
from deop.methods import METHOD_CHOICES
from deop.models import RANDOM_WEIGHTS_WARNING
from deop.pipeline import Segmenter
from deop.presets import PRESET_TITLES, PRESETS
from deop.vocabulary import Vocabulary

ROOT = Path(__file__).resolve().parent
log = logging.getLogger("deop.app")
CLICK_HINT = "Click a segment in the image above, or a class in an overlay's legend, to see its top-5 classes."
HINT = ("Classes separated by commas or new lines. Synonyms: a line `person: man, woman, child` is one class. "
        "Presets: `@voc`, `@coco`, `@ade20k`, `@cityscapes`.")


def image_input(**kwargs) -> gr.Image:
    """An image upload whose file reaches ``deop.images.load_image`` unopened.

    Stock gr.Image opens every upload with PIL before our code runs, so a non-image, a truncated file or a
    decompression bomb fails inside Gradio with a bare "Error"; our loader names the problem instead and
    handles what PIL alone gets wrong (EXIF rotation, CMYK, 16-bit, alpha). The override is per instance:
    a gr.Image subclass would make Gradio write a type-stub file next to this one at import time."""
    component = gr.Image(type="filepath", **kwargs)
    stock = component.preprocess

    def preprocess(payload):
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return payload.path
        return stock(payload)

    component.preprocess = preprocess
    return component


def option_widget(option: Option, value: Any) -> gr.components.Component:
    """The widget an option's description asks for, showing `value`."""
    w = option.meta.widget
    if w.kind == "slider":
        return gr.Slider(w.minimum, w.maximum, value=value, step=w.step, label=w.label, info=w.info)
    if w.kind == "dropdown":
        return gr.Dropdown(option.choices, value=value, label=w.label, info=w.info)
    if w.kind == "checkbox":
        return gr.Checkbox(value=value, label=w.label, info=w.info)
    raise ValueError(f"option {option.name} asks for an unknown widget kind {w.kind!r}")


def with_signature(fn, names: list[str], defaults: dict[str, Any]):
    """Give a handler taking ``**values`` the named parameters Gradio's API shows (and gradio_client's
    keyword arguments use), in the order of the event's inputs."""
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                default=defaults.get(n, inspect.Parameter.empty)) for n in names]
    params.append(inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=gr.Progress()))

    def handler(*args, progress=gr.Progress()):
        return fn(dict(zip(names, args)), progress)

    handler.__signature__ = inspect.Signature(params)
    handler.__name__ = fn.__name__
    return handler


def user_errors(fn):
    """Our own errors become a message naming the problem; anything else is a bug: logged with its
    traceback on the server and shown only as an internal error with an id to quote, never a traceback
    or Gradio's generic "Error"."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except USER_ERRORS as exc:
            raise gr.Error(str(exc)) from None
        except Exception as exc:
            raise gr.Error(internal_error(exc, log, fn.__name__)) from None

    return wrapped


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


def build_app(config: SegmenterConfig, time_limit: float | None = 300.0, queue_size: int = 16) -> gr.Blocks:
    atomic_image_cache()
    segmenter = Segmenter(config)
    loader = ui.ModelLoader(segmenter).start()
    models = ui.proposal_models(segmenter)
    segmenters = ui.SegmenterPool(segmenter, [kind for _, kind in models])
    defaults = config.options
    options = [request_options()[name] for name in APP_OPTIONS]
    examples = json.loads((ROOT / "assets" / "examples.json").read_text())

    @user_errors
    def segment(values: dict[str, Any], progress: gr.Progress):
        image = values["image"]
        if image is None:
            raise gr.Error("Upload an image first (or click an example).")
        loader.ready.wait()
        if loader.error:
            raise gr.Error(loader.error)
        image = load_image(image, display_name=Path(str(image)).name)  # errors name the user's file only
        overrides = {o.name: _coerce(o, values[o.name]) for o in options}
        result = segmenters.get(values["proposal_model"]).segment(
            image, values["vocabulary"], method=values["method"], timeout=time_limit,
            progress=lambda f, d: progress(f, desc=d), **overrides)
        views = ui.segment_views(image, result)
        views["crop"] = gr.update(value=views["crop"], visible=views["crop"] is not None)
        views["heatmap_classes"] = gr.update(choices=views["heatmap_classes"], value=views["heatmap_classes"][0])
        state = {"image": image, "result": result, "view": views["inspect"]}
        return [*(views[name] for name in ui.SEGMENT_OUTPUTS), CLICK_HINT, state]

    @user_errors
    def heatmap(class_name, state):
        return None if not state else ui.heatmap_for(state["image"], state["result"], class_name)

    @user_errors
    def click_legend(state, evt: gr.SelectData):
        """A click on a legend entry of the overlay (Gradio reports the annotation's index and label)."""
        if not state:
            return "Segment an image first."
        label = evt.value.get("label") if isinstance(evt.value, dict) else evt.value
        return ui.class_segments(state["result"], str(label))

    @user_errors
    def click_pixel(state, evt: gr.SelectData):
        """A click on the inspector image: Gradio reports the pixel position in the image's own size."""
        if not state or not isinstance(evt.index, (list, tuple)):
            return gr.update(), "Segment an image first."
        x, y = int(evt.index[0]), int(evt.index[1])
        return ui.highlight_at(state["view"], state["result"], x, y), ui.segment_at(state["result"], x, y)

    with gr.Blocks(title="DeOP open-vocabulary segmentation") as demo:
        gr.Markdown("# DeOP: open-vocabulary segmentation in one CLIP pass\n"
                    "Segment Anything proposes masks; CLIP runs **once** over the whole image "
                    "([DeOP, ICCV 2023](https://arxiv.org/abs/2305.01573)) and each mask is classified from the "
                    "dense map. The crop baseline (one CLIP pass per mask) runs on the same masks for comparison.")
        if config.random_weights:
            gr.HTML(f'<div id="random-banner" style="background:#c62828;color:white;padding:8px;'
                    f'border-radius:6px;font-weight:bold">{RANDOM_WEIGHTS_WARNING}</div>')
        status = gr.Markdown(loader.status(), elem_id="status")
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=2):
                image = image_input(label="Image", sources=["upload", "clipboard", "webcam"])
                preset = gr.Dropdown([("(none)", "")] + [(PRESET_TITLES[k], k) for k in PRESETS],
                                     value="", label="Vocabulary preset")
                vocabulary = gr.Textbox(label="Classes", value="cat, sofa, wall, blanket", lines=3, info=HINT)
                method = gr.Radio(list(METHOD_CHOICES), value="both", label="Method")
                with gr.Accordion("Advanced", open=False):
                    proposal_model = gr.Dropdown(models, value=config.sam_kind, label="Proposal model",
                                                 visible=len(models) > 1,
                                                 info="loaded on first use; same options for all")
                    widgets = {o.name: option_widget(o, option_value(defaults, o.name)) for o in options}
                run = gr.Button("Segment", variant="primary")
            with gr.Column(scale=3):
                with gr.Row():
                    out_left = gr.AnnotatedImage(label="One pass (DeOP)")
                    out_right = gr.AnnotatedImage(label="Crop baseline")
                latency = gr.Markdown(elem_id="latency")
                chart = gr.Image(label="Latency per stage", interactive=False)
                with gr.Tabs():
                    with gr.Tab("Inspect a segment"):
                        inspect_view = gr.Image(label="Click a segment", interactive=False, elem_id="inspect")
                        clicked = gr.Markdown(CLICK_HINT, elem_id="clicked")
                    with gr.Tab("Class heatmap"):
                        heat_class = gr.Dropdown([], label="Heatmap class")
                        heat = gr.Image(label="Class similarity heatmap", interactive=False)
                    with gr.Tab("Downloads"):
                        files = gr.File(label="Overlay, labels, per-class masks, JSON (segments as COCO RLE)",
                                        file_count="multiple")
        gr.Examples([[str(ROOT / e["image"]), e["vocabulary"]] for e in examples], [image, vocabulary])

        inputs = {"image": image, "vocabulary": vocabulary, "method": method, **widgets,
                  "proposal_model": proposal_model}
        outputs = {"one_pass": out_left, "crop": out_right, "latency": latency, "chart": chart, "files": files,
                   "heatmap_classes": heat_class, "inspect": inspect_view}
        handler_defaults = {"method": "both", "proposal_model": config.sam_kind,
                            **{o.name: option_value(defaults, o.name) for o in options}}
        preset.change(lambda p, v: Vocabulary.from_names(PRESETS[p]).to_text() if p else v, [preset, vocabulary],
                      vocabulary)
        run.click(with_signature(segment, list(inputs), handler_defaults), list(inputs.values()),
                  [*(outputs[name] for name in ui.SEGMENT_OUTPUTS), clicked, state], api_name="segment")
        heat_class.change(heatmap, [heat_class, state], heat)
        out_left.select(click_legend, [state], clicked)
        out_right.select(click_legend, [state], clicked)
        inspect_view.select(click_pixel, [state], [inspect_view, clicked])
        demo.load(loader.status, None, status)
        gr.Timer(2.0).tick(loader.status, None, status)
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    return demo


def _coerce(option: Option, value: Any) -> Any:
    """Gradio hands sliders' values as floats; the options' own checks do the rest."""
    if option.type == "int" and isinstance(value, float):
        return int(value)
    return value


# The latency table on a phone: no word broken inside ("classificati/on", "baselin/e"), stages on one line,
# numbers right-aligned (Gradio's styles override the markdown table's own alignment), cells a little tighter.
CSS = """
#latency th, #latency td { overflow-wrap: normal; word-break: normal; }
#latency td:first-child, #latency th:first-child { white-space: nowrap; }
#latency td:not(:first-child), #latency th:not(:first-child) { text-align: right; }
@media (max-width: 480px) { #latency th, #latency td { padding: 6px 8px; } }
"""


def launch(demo: gr.Blocks, **kwargs):
    """Serve the app; besides its own outputs, Gradio may read files only from ``assets/`` (the examples)."""
    return demo.launch(allowed_paths=[str(ROOT / "assets")], css=CSS, **kwargs)


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
    args = parser.parse_args()
    launch(build_app(config_from_args(args), args.time_limit), server_name=args.host, server_port=args.port,
           share=args.share)


if __name__ == "__main__":
    main()
