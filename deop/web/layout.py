"""The page: which components there are, where, with which labels. It creates components and nothing else
(``deop.web.events`` wires them to the handlers). The menus and the Advanced panel's widgets come from the
registries and the option descriptions: proposal models from ``deop.proposers`` (through the server's
list), methods from ``deop.methods``, presets from ``deop.presets``, one widget per ``APP_OPTIONS`` entry
of ``deop.config`` as its ``Widget`` describes it.

A new widget: a field of ``Page`` and one line where it sits below; a new option's widget needs nothing
here (its description in ``deop.config`` is enough).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..config import Option
from ..methods import METHOD_CHOICES
from ..models import RANDOM_WEIGHTS_WARNING
from ..presets import PRESET_TITLES, PRESETS
from . import texts
from .workarounds import image_input, raw_input

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


@dataclass
class Page:
    """The page's components by name (those of /segment's outputs named as in ``SEGMENT_EVENT_OUTPUTS``)."""

    status: gr.Markdown
    state: gr.State
    image: gr.Image
    preset: gr.Dropdown
    vocabulary: gr.Textbox
    method: gr.Radio
    proposal_model: gr.Dropdown
    widgets: dict[str, gr.components.Component]  # one per app option, by option name
    run: gr.Button
    run_status: gr.Markdown
    one_pass: gr.AnnotatedImage
    crop: gr.AnnotatedImage
    latency: gr.Markdown
    chart: gr.Image
    click_mode: gr.Radio
    inspect: gr.Image
    clicked: gr.Markdown
    compare_button: gr.Button
    variants: gr.Gallery
    variants_table: gr.Markdown
    heatmap_classes: gr.Dropdown
    heatmap: gr.Image
    make_files: gr.Button
    files: gr.File
    add_x: gr.Number  # hidden: /add_segment's inputs for API clients (the page clicks the inspector)
    add_y: gr.Number
    add_mode: gr.Radio
    add_button: gr.Button
    debounced: gr.Textbox  # hidden: the vocabulary, once typing has paused
    timings_button: gr.Button  # hidden: /timings, where the last request's time went (for bench-app)
    timings: gr.JSON
    timer: gr.Timer  # ticks the status line while the models load

    def __getitem__(self, name: str) -> gr.components.Component:
        """The component of an output or input by name, an option's widget included (the server's
        ``input_names`` give /segment's inputs in API order)."""
        return self.widgets[name] if name in self.widgets else getattr(self, name)


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


def build_page(random_weights: bool, status: str, defaults: dict[str, Any], models: list[tuple[str, str]],
               options: list[Option], delete_session: Any) -> Page:
    """The page inside the current Blocks. `models`: the proposal models offered, (title, name), the default
    first; `options`: the app options whose widgets the Advanced panel shows; `delete_session`: called with
    a session's token when its browser state expires."""
    gr.Markdown(texts.INTRO)
    if random_weights:
        gr.HTML(f'<div id="random-banner" style="background:#c62828;color:white;padding:8px;'
                f'border-radius:6px;font-weight:bold">{RANDOM_WEIGHTS_WARNING}</div>')
    parts: dict[str, Any] = {"status": gr.Markdown(status, elem_id="status"),
                             "state": gr.State(None, time_to_live=3600, delete_callback=delete_session)}
    with gr.Row():
        with gr.Column(scale=2):
            parts.update(_request(defaults, models, options))
        with gr.Column(scale=3):
            parts.update(_results())
    with gr.Row(visible=False):
        parts["add_x"], parts["add_y"] = (raw_input(gr.Number(label=n, precision=None)) for n in ("x", "y"))
        parts["add_mode"] = gr.Radio(list(texts.CLICK_MODES), value=texts.CLICK_MODES[1], label="mode")
        parts["add_button"] = gr.Button("add")
        parts["debounced"] = gr.Textbox()
        parts["timings_button"], parts["timings"] = gr.Button("timings"), gr.JSON()
    parts["timer"] = gr.Timer(2.0)
    return Page(**parts)


def _request(defaults: dict[str, Any], models: list[tuple[str, str]], options: list[Option]) -> dict[str, Any]:
    """The left column: the image, the vocabulary, the method, the Advanced panel and the button."""
    parts = {"image": image_input(label="Image", sources=["upload", "clipboard", "webcam"]),
             "preset": gr.Dropdown([("(none)", "")] + [(PRESET_TITLES[k], k) for k in PRESETS], value="",
                                   label="Vocabulary preset"),
             "vocabulary": raw_input(gr.Textbox(label="Classes", value=defaults["vocabulary"], lines=3,
                                                info=texts.HINT)),
             "method": raw_input(gr.Radio(list(METHOD_CHOICES), value=defaults["method"], label="Method"))}
    with gr.Accordion("Advanced", open=False):
        parts["proposal_model"] = raw_input(gr.Dropdown(models, value=defaults["proposal_model"],
                                                        label="Proposal model", visible=len(models) > 1,
                                                        info=texts.PROPOSAL_MODEL_INFO))
        parts["widgets"] = {o.name: option_widget(o, defaults[o.name]) for o in options}
    parts["run"] = gr.Button(texts.RUN, variant="primary", elem_id="run")
    return parts


def _results() -> dict[str, Any]:
    """The right column: the status line, both overlays, the latency table and chart, and the tabs."""
    parts: dict[str, Any] = {"run_status": gr.Markdown(elem_id="run-status")}
    with gr.Row():
        parts["one_pass"] = gr.AnnotatedImage(label="One pass (DeOP)", elem_id="one-pass")
        parts["crop"] = gr.AnnotatedImage(label="Crop baseline", elem_id="crop")
    parts["latency"] = gr.Markdown(elem_id="latency")
    parts["chart"] = gr.Image(label="Latency per stage", interactive=False)
    # "wrap": on a phone the tabs that do not fit the row go onto a second one, all in sight (Gradio's default
    # moves them into a "..." menu, where a visitor does not find them)
    with gr.Tabs(elem_id="result-tabs", overflow_behavior="wrap"):
        with gr.Tab(texts.TABS["inspect"]):
            parts["click_mode"] = gr.Radio(list(texts.CLICK_MODES), value=texts.CLICK_MODES[0],
                                           label="A click on the image", info=texts.CLICK_MODE_INFO,
                                           elem_id="click-mode")
            parts["inspect"] = gr.Image(label="Click a segment", interactive=False, elem_id="inspect")
            parts["clicked"] = gr.Markdown(texts.CLICK_HINT, elem_id="clicked")
        with gr.Tab(texts.TABS["compare"]):
            gr.Markdown(texts.COMPARE_INTRO)
            parts["compare_button"] = gr.Button("Compare the severance variants")
            parts["variants"] = gr.Gallery(label="One overlay per variant", columns=3, object_fit="contain",
                                           height="auto", elem_id="variants")
            parts["variants_table"] = gr.Markdown(elem_id="variants-table")
        with gr.Tab(texts.TABS["heatmap"]):
            parts["heatmap_classes"] = gr.Dropdown([], label="Heatmap class")
            parts["heatmap"] = gr.Image(label="Class similarity heatmap", interactive=False)
        with gr.Tab(texts.TABS["downloads"]):
            gr.Markdown(texts.DOWNLOADS_INTRO)
            parts["make_files"] = gr.Button(texts.DOWNLOADS_BUTTON, elem_id="make-files")
            parts["files"] = gr.File(label=texts.FILES_LABEL, file_count="multiple", elem_id="files")
    return parts
