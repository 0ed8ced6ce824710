"""Gradio front end: layout and wiring only; everything it shows comes from the deop package."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import gradio as gr

from deop import SegmenterConfig, ui
from deop.cli import add_model_arguments, add_option_arguments, config_from_args
from deop.dense_clip import SEVERANCE_VARIANTS
from deop.errors import USER_ERRORS
from deop.models import RANDOM_WEIGHTS_WARNING
from deop.presets import PRESET_TITLES, PRESETS, TEMPLATES
from deop.segmenter import Segmenter
from deop.vocabulary import Vocabulary

ROOT = Path(__file__).resolve().parent
HINT = ("Classes separated by commas or new lines. Synonyms: a line `person: man, woman, child` is one class. "
        "Presets: `@voc`, `@coco`, `@ade20k`, `@cityscapes`.")


def build_app(config: SegmenterConfig, time_limit: float | None = 300.0, queue_size: int = 16) -> gr.Blocks:
    segmenter = Segmenter(config)
    loader = ui.ModelLoader(segmenter).start()
    defaults = config.options
    examples = json.loads((ROOT / "assets" / "examples.json").read_text())

    def segment(image, vocabulary, method="both", points_per_side=defaults.proposals.points_per_side,
                pred_iou_thresh=defaults.proposals.pred_iou_thresh,
                stability_score_thresh=defaults.proposals.stability_score_thresh, max_side=defaults.max_side,
                severance=defaults.severance, none_threshold=defaults.none_threshold,
                fill_uncovered=defaults.fill_uncovered, templates=defaults.templates, clip_size=defaults.clip_size,
                n_severed=defaults.n_severed, max_masks=defaults.proposals.max_masks,
                min_mask_region_area=defaults.proposals.min_mask_region_area,
                box_nms_thresh=defaults.proposals.box_nms_thresh, state=None, progress=gr.Progress()):
        if image is None:
            raise gr.Error("Upload an image first (or click an example).")
        loader.ready.wait()
        if loader.error:
            raise gr.Error(loader.error)
        try:
            result = segmenter.segment(
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
        state = {"image": image, "result": result}
        return (left, gr.update(value=right, visible=right is not None), ui.latency_markdown(result),
                ui.chart(result), ui.downloads(image, result), heat_choices, state)

    def heatmap(class_name, state):
        return None if not state else ui.heatmap_for(state["image"], state["result"], class_name)

    def click(state, evt: gr.SelectData):
        if not state or evt.index is None:
            return "Segment an image first."
        if isinstance(evt.index, (list, tuple)):  # a pixel position
            return ui.segment_at(state["result"], int(evt.index[0]), int(evt.index[1]))
        label = evt.value.get("label") if isinstance(evt.value, dict) else evt.value  # an annotation
        return ui.class_segments(state["result"], str(label))

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
                image = gr.Image(type="numpy", label="Image", sources=["upload", "clipboard", "webcam"])
                preset = gr.Dropdown([("(none)", "")] + [(PRESET_TITLES[k], k) for k in PRESETS],
                                     value="", label="Vocabulary preset")
                vocabulary = gr.Textbox(label="Classes", value="cat, sofa, wall, blanket", lines=3, info=HINT)
                method = gr.Radio(["one-pass", "crop", "both", "dense"], value="both", label="Method")
                with gr.Accordion("Advanced", open=False):
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
                with gr.Row():
                    heat_class = gr.Dropdown([], label="Heatmap class")
                    heat = gr.Image(label="Class similarity heatmap", interactive=False)
                clicked = gr.Markdown("Click a segment in the overlay to see its top-5 classes.")
                files = gr.File(label="Downloads", file_count="multiple")
        gr.Examples([[str(ROOT / e["image"]), e["vocabulary"]] for e in examples], [image, vocabulary])

        preset.change(lambda p, v: Vocabulary.from_names(PRESETS[p]).to_text() if p else v, [preset, vocabulary],
                      vocabulary)
        run.click(segment, [image, vocabulary, method, pps, iou, stab, max_side, severance, threshold, fill, templates,
                            clip_size, n_severed, max_masks, min_area, nms, state],
                  [out_left, out_right, latency, chart, files, heat_class, state], api_name="segment")
        heat_class.change(heatmap, [heat_class, state], heat)
        out_left.select(click, [state], clicked)
        demo.load(loader.status, None, status)
        gr.Timer(2.0).tick(loader.status, None, status)
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    return demo


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
    build_app(config_from_args(args), args.time_limit).launch(
        server_name=args.host, server_port=args.port, share=args.share, allowed_paths=[str(ROOT / "assets")])


if __name__ == "__main__":
    main()
