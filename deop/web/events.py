"""Which event calls which handler: the app's wiring, in one table.

Each row of ``table`` is one Gradio event: the component's event, the ``Server`` method it calls, its
inputs and outputs, its API name (None: none given; a repeated name gets Gradio's ``_1`` suffix) and its
concurrency group (``PIPELINE``: one request at a time uses the models), then anything else Gradio takes.
``THEN`` chains a row after the one before it. A new endpoint is one ``Server`` method and one row here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from .layout import Page
from .server import SEGMENT_EVENT_OUTPUTS, Server

PIPELINE = "pipeline"
THEN = "then"  # an event column's value: run after the previous row's event
PRIVATE = {"api_visibility": "private"}
# Edits that the caches answer re-run by themselves: the threshold when its slider is let go, the fill option
# and templates when picked (the vocabulary once typing pauses, debounced in the browser: see DEBOUNCE).
RERUN_ON = (("none_threshold", "release"), ("fill_uncovered", "input"), ("templates", "input"))
# A click that added or refined a segment empties the Downloads tab's list in the browser (its files were made
# before that segment; the button makes them again); an inspecting click leaves it. An answer of /segment or
# /rerun empties it itself.
AFTER_CLICK = "(mode, files) => mode === 'inspect' ? files : null"
# The vocabulary box's edits, debounced in the browser: a hidden box takes the text 0.6 s after the last
# change, and its change runs the cached re-run once (Gradio has no debounce of its own). On the box's
# change, not its input: Gradio 6.31's textbox sends `input` from its key handler only, so a text pasted
# with the mouse, dropped or filled in by the browser re-ran nothing. A superseded change gives undefined,
# which Gradio takes as no new value: it once gave the hidden box's value, which Gradio hands over as null
# for a box nobody set, so every edit first sent an empty re-run to the queue.
DEBOUNCE = """text => new Promise(resolve => {
  const me = (window.__deop_typing = (window.__deop_typing || 0) + 1);
  setTimeout(() => resolve(me === window.__deop_typing ? text : undefined), 600);
})"""


@dataclass(frozen=True)
class Row:
    event: Callable | str  # a component's event listener (``page.run.click``), or THEN
    handler: Callable | None
    inputs: Any
    outputs: Any
    api_name: str | None = None
    group: str | None = None  # the concurrency group; None: Gradio's own per-event one
    more: dict[str, Any] = field(default_factory=dict)


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


def table(demo: gr.Blocks, page: Page, server: Server) -> list[Row]:
    """Every event of the page but the examples' (``deop.web.app`` makes those), in registration order."""
    names, defaults = [*server.input_names, "state"], {**server.defaults, "state": None}

    def by_name(fn: Callable, progress: bool = True) -> Callable:
        return with_signature(fn, names, defaults, progress)

    state = page.state
    request = [*(page[name] for name in server.input_names), state]
    typed = [page.image, page.debounced, *request[2:]]  # the vocabulary once typing has paused
    shown = [page[n] for n in SEGMENT_EVENT_OUTPUTS]
    clicked = [page.inspect, page.clicked, page.one_pass]
    variants = [page.variants, page.variants_table]
    point = [page.add_x, page.add_y, page.add_mode, state]
    heat = [page.heatmap_classes, state]
    rerun, stale = by_name(server.rerun), by_name(server.stale, progress=False)
    legend = server.click_legend  # one handler object: both overlays' legends share its concurrency group
    segment, validate = by_name(server.segment), by_name(server.validate, progress=False)
    costly = [page[name] for name in server.input_names if name not in server.labels_stage]
    return [
        # event                        handler                   inputs              outputs       api_name    group
        Row(page.run.click,            segment,                  request,            shown,        "segment",  PIPELINE,
            {"validator": validate}),
        Row(page.vocabulary.change,    None,                     page.vocabulary,    page.debounced,
            more={"js": DEBOUNCE, "trigger_mode": "multiple", "queue": False}),
        Row(page.debounced.change,     rerun,                    typed,              shown,        "rerun",   PIPELINE),
        *(Row(getattr(page.widgets[name], event), rerun,         request,            shown,        "rerun",    PIPELINE,
              PRIVATE) for name, event in RERUN_ON),
        Row(page.preset.change,        server.preset_vocabulary, [page.preset, page.vocabulary], page.vocabulary,
            "preset", None, PRIVATE),
        Row(THEN,                      rerun,                    request,            shown,        "rerun",    PIPELINE,
            PRIVATE),
        *(Row(c.change,                stale,                    request,            page.run,     "stale",    None,
              {"queue": False, **PRIVATE}) for c in costly),
        Row(page.heatmap_classes.change, server.heatmap,         heat,               page.heatmap, "heatmap"),
        Row(page.one_pass.select,      legend,                   [state],            page.clicked, "click_legend"),
        Row(page.crop.select,          legend,                   [state],            page.clicked, "click_legend"),
        Row(page.inspect.select,       server.click_pixel,       [state, page.click_mode], clicked, "click_pixel",
            PIPELINE),
        Row(THEN,                      None,                     [page.click_mode, page.files], page.files,
            more={"js": AFTER_CLICK, "queue": False}),
        Row(page.add_button.click,     server.add_segment,       point,              clicked,      "add_segment",
            PIPELINE),
        Row(page.compare_button.click, server.compare,           [state],            variants,     "compare_variants",
            PIPELINE),
        Row(page.make_files.click,     server.downloads,         [state],            page.files,   "downloads"),
        Row(demo.load,                 server.status,            None,               page.status,  "status"),
        Row(page.timer.tick,           server.status,            None,               page.status,  "status"),
        Row(page.timings_button.click, server.timings,           [state],            page.timings, "timings",
            more={"api_visibility": "undocumented"}),
    ]


def wire(rows: list[Row]) -> None:
    """Register each row's event with Gradio, in order, inside the current Blocks."""
    previous = None
    for row in rows:
        listener = previous.then if row.event == THEN else row.event
        extra = dict(row.more)
        if row.group is not None:
            extra["concurrency_id"] = row.group
        if row.api_name is not None:
            extra["api_name"] = row.api_name
        previous = listener(row.handler, row.inputs, row.outputs, **extra)
