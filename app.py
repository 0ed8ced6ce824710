"""Gradio front end: layout and wiring only; everything it shows comes from the deop package."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import gradio as gr

from deop import SegmenterConfig, ui
from deop.cli import add_model_arguments, add_option_arguments, config_from_args
from deop.dense_clip import SEVERANCE_VARIANTS
from deop.errors import USER_ERRORS
from deop.images import ImageError, load_image
from deop.models import RANDOM_WEIGHTS_WARNING
from deop.presets import PRESET_TITLES, PRESETS, TEMPLATES
from deop.segmenter import Segmenter
from deop.vocabulary import Vocabulary

ROOT = Path(__file__).resolve().parent
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
    examples = json.loads((ROOT / "assets" / "examples.json").read_text())

    def segment(image, vocabulary, method="both", points_per_side=defaults.proposals.points_per_side,
                pred_iou_thresh=defaults.proposals.pred_iou_thresh,
                stability_score_thresh=defaults.proposals.stability_score_thresh, max_side=defaults.max_side,
                severance=defaults.severance, none_threshold=defaults.none_threshold,
                fill_uncovered=defaults.fill_uncovered, templates=defaults.templates, clip_size=defaults.clip_size,
                n_severed=defaults.n_severed, max_masks=defaults.proposals.max_masks,
                min_mask_region_area=defaults.proposals.min_mask_region_area,
                box_nms_thresh=defaults.proposals.box_nms_thresh, proposal_model=config.sam_kind, state=None,
                progress=gr.Progress()):
        if image is None:
            raise gr.Error("Upload an image first (or click an example).")
        loader.ready.wait()
        if loader.error:
            raise gr.Error(loader.error)
        try:  # errors name the user's file, not the server's upload folder
            image = load_image(image, display_name=Path(str(image)).name)
        except ImageError as exc:
            raise gr.Error(str(exc)) from None
        try:
            result = segmenters.get(proposal_model).segment(
                image, vocabulary, method=method, timeout=time_limit,
                progress=lambda f, d: progress(f, desc=d), points_per_side=int(points_per_side),
                pred_iou_thresh=float(pred_iou_thresh), stability_score_thresh=float(stability_score_thresh),
                max_side=int(max_side), severance=severance, none_threshold=float(none_threshold),
                fill_uncovered=bool(fill_uncovered), templates=templates, clip_size=int(clip_size),
                n_severed=int(n_severed), max_masks=int(max_masks), min_mask_region_area=int(min_mask_region_area),
                box_nms_thresh=float(box_nms_thresh))
        except USER_ERRORS as exc:
            raise gr.Error(str(exc)) from None
        first = "one-pass" if "one-pass" in result.methods else method
        left = (image, ui.annotations(result, first))
        right = (image, ui.annotations(result, "crop")) if "crop" in result.methods and first != "crop" else None
        heat_choices = gr.update(choices=result.classes, value=result.classes[0])
        view = ui.inspect_view(image, result)
        state = {"image": image, "result": result, "view": view}
        return (left, gr.update(value=right, visible=right is not None), ui.latency_markdown(result),
                ui.chart(result), ui.downloads(image, result), heat_choices, view, CLICK_HINT, state)

    def heatmap(class_name, state):
        return None if not state else ui.heatmap_for(state["image"], state["result"], class_name)

    def click_legend(state, evt: gr.SelectData):
        """A click on a legend entry of the overlay (Gradio reports the annotation's index and label)."""
        if not state:
            return "Segment an image first."
        label = evt.value.get("label") if isinstance(evt.value, dict) else evt.value
        return ui.class_segments(state["result"], str(label))

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
                method = gr.Radio(["one-pass", "crop", "both", "dense"], value="both", label="Method")
                with gr.Accordion("Advanced", open=False):
                    proposal_model = gr.Dropdown(models, value=config.sam_kind, label="Proposal model",
                                                 visible=len(models) > 1,
                                                 info="loaded on first use; same options for both")
                    pps = gr.Slider(4, 48, value=defaults.proposals.points_per_side, step=1,
                                    label="SAM points per side")
                    iou = gr.Slider(0, 1, value=defaults.proposals.pred_iou_thresh, label="SAM predicted IoU threshold")
                    stab = gr.Slider(0, 1, value=defaults.proposals.stability_score_thresh,
                                     label="SAM stability threshold")
                    max_side = gr.Slider(128, 2048, value=defaults.max_side, step=32, label="Max image side")
                    severance = gr.Dropdown(list(SEVERANCE_VARIANTS), value=defaults.severance,
                                            label="Patch severance variant")
                    threshold = gr.Slider(0, 1, value=defaults.none_threshold, label='"None of these" threshold')
                    fill = gr.Checkbox(value=defaults.fill_uncovered, label="Fill uncovered pixels from the dense map")
                    templates = gr.Dropdown(list(TEMPLATES), value=defaults.templates, label="Prompt templates")
                    clip_size = gr.Slider(224, 1024, value=defaults.clip_size, step=16, label="CLIP input long side")
                    n_severed = gr.Slider(1, 4, value=defaults.n_severed, step=1, label="Severed final blocks")
                    max_masks = gr.Slider(1, 300, value=defaults.proposals.max_masks, step=1, label="Max masks")
                    min_area = gr.Slider(0, 2000, value=defaults.proposals.min_mask_region_area, step=10,
                                         label="SAM min mask region area (px)")
                    nms = gr.Slider(0, 1, value=defaults.proposals.box_nms_thresh, label="SAM box NMS threshold")
                run = gr.Button("Segment", variant="primary")
            with gr.Column(scale=3):
                with gr.Row():
                    out_left = gr.AnnotatedImage(label="One pass (DeOP)")
                    out_right = gr.AnnotatedImage(label="Crop baseline")
                latency = gr.Markdown(elem_id="latency")
                chart = gr.Image(label="Latency per stage", interactive=False)
                with gr.Tabs():
                    with gr.Tab("Inspect a segment"):
                        inspect = gr.Image(label="Click a segment", interactive=False, elem_id="inspect")
                        clicked = gr.Markdown(CLICK_HINT, elem_id="clicked")
                    with gr.Tab("Class heatmap"):
                        heat_class = gr.Dropdown([], label="Heatmap class")
                        heat = gr.Image(label="Class similarity heatmap", interactive=False)
                    with gr.Tab("Downloads"):
                        files = gr.File(label="Overlay, labels, per-class masks, JSON (segments as COCO RLE)",
                                        file_count="multiple")
        gr.Examples([[str(ROOT / e["image"]), e["vocabulary"]] for e in examples], [image, vocabulary])

        preset.change(lambda p, v: Vocabulary.from_names(PRESETS[p]).to_text() if p else v, [preset, vocabulary],
                      vocabulary)
        run.click(segment, [image, vocabulary, method, pps, iou, stab, max_side, severance, threshold, fill, templates,
                            clip_size, n_severed, max_masks, min_area, nms, proposal_model, state],
                  [out_left, out_right, latency, chart, files, heat_class, inspect, clicked, state],
                  api_name="segment")
        heat_class.change(heatmap, [heat_class, state], heat)
        out_left.select(click_legend, [state], clicked)
        out_right.select(click_legend, [state], clicked)
        inspect.select(click_pixel, [state], [inspect, clicked])
        demo.load(loader.status, None, status)
        gr.Timer(2.0).tick(loader.status, None, status)
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    return demo


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
    add_option_arguments(parser)
    parser.set_defaults(preset="fast")  # interactive use on a CPU: see PROPOSAL_PRESETS
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--share", action="store_true")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds per request")
    args = parser.parse_args()
    args.random_weights = args.random_weights or os.environ.get("DEOP_RANDOM_WEIGHTS") == "1"
    args.device = os.environ.get("DEOP_DEVICE", args.device)
    launch(build_app(config_from_args(args), args.time_limit), server_name=args.host, server_port=args.port,
           share=args.share)


if __name__ == "__main__":
    main()
