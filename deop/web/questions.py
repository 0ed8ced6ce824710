"""The handlers a session's kept result answers, without running the pipeline again: the heatmap of a
class, a click on a legend entry or on the inspector (inspect, add a segment from the cached SAM embedding,
refine it), /add_segment for API clients, /compare_variants, and /downloads (the files, made when asked).
``ResultQuestions`` is part of ``deop.web.server.Server``; the fields it reads are the server's, named below."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from .. import serving, ui
from ..config import is_number
from ..errors import OptionError
from . import texts
from .errors import user_errors


class ResultQuestions:
    """Handlers answered from ``self.sessions`` (the results kept per session); see ``Server``."""

    sessions: serving.SessionStore
    loader: ui.ModelLoader
    compute: Any  # deop.web.gpu.ModelWork
    max_added: int
    results: Any  # pathlib.Path: where the downloads are written
    request_settings: Callable[[dict[str, Any]], tuple[Any, Any]]
    client_gone: Callable[[], Callable[[], bool] | None]

    @user_errors
    def heatmap(self, class_name, token):
        view = self.sessions.get(token)
        return None if view is None else ui.heatmap_for(view.image, view.result, class_name)

    @user_errors
    def click_legend(self, token, evt: gr.SelectData) -> str:
        """A click on a legend entry of the overlay (Gradio reports the annotation's index and label)."""
        view = self.sessions.get(token)
        if view is None:
            return texts.EXPIRED if token else texts.NO_SESSION
        label = evt.value.get("label") if isinstance(evt.value, dict) else evt.value
        return ui.class_segments(view.result, str(label), added=view.extra.get("added", ()))

    @user_errors
    def click_pixel(self, token, mode, evt: gr.SelectData) -> list:
        """A click on the inspector image: Gradio reports the pixel position in the image's own size."""
        if not isinstance(evt.index, (list, tuple)):
            return [gr.skip(), texts.CLICK_ON_IMAGE, gr.skip()]
        return self.click_at(token, evt.index[0], evt.index[1], mode)

    @user_errors
    def add_segment(self, x, y, mode, token) -> list:
        # /add_segment: a click at (x, y) for API clients (no docstring: it would become the API's description)
        return self.click_at(token, x, y, mode)

    def click_at(self, token: Any, x: Any, y: Any, mode: Any) -> list:
        """A click on the inspector (or /add_segment): inspect what is there, or add a segment at (x, y)
        from the cached embedding, or refine the last added one with a negative point. Returns the
        inspector's picture, its text and the one-pass overlay (with the added segments)."""
        view = self.sessions.get(token)
        if view is None:
            return [gr.skip(), texts.EXPIRED if token else texts.NO_SESSION, gr.skip()]
        for name, value in (("x", x), ("y", y)):
            if not is_number(value):
                raise OptionError(f"{name} must be a pixel position (a number), got {value!r}")
        if mode not in texts.CLICK_MODES:
            raise OptionError(f"mode must be one of {', '.join(texts.CLICK_MODES)}; got {mode!r}")
        x, y, result = int(x), int(y), view.result
        h, w = view.image.shape[:2]
        if not (0 <= x < w and 0 <= y < h):
            raise OptionError(f"the point ({x}, {y}) lies outside the {w} x {h} image")
        added = view.extra.setdefault("added", [])
        picture = ui.inspect_view(view.image, result)
        on_added = ui.added_under(added, x, y)
        covered = on_added is not None or ui.segment_under(result, x, y) is not None
        inspect_mode, _, refine_mode = texts.CLICK_MODES
        if mode == inspect_mode and covered:
            if on_added is not None:
                seg = added[on_added]
                return [ui.render_highlight(picture, seg.mask), ui.added_markdown(seg, on_added, result.classes),
                        gr.skip()]
            return [ui.highlight_at(picture, result, x, y), ui.segment_at(result, x, y), gr.skip()]
        if mode == refine_mode and not added:
            return [gr.skip(), texts.ADD_FIRST, gr.skip()]
        if mode != refine_mode and len(added) >= self.max_added:
            return [gr.skip(), texts.too_many_added(self.max_added), gr.skip()]
        self.loader.ready.wait()
        _, opts = self.request_settings(view.request)
        refine = mode == refine_mode
        points = [*added[-1].points, (x, y, False)] if refine else [(x, y, True)]
        new = self.compute.add(view.request["proposal_model"], view.image, view.request["vocabulary"], points, opts,
                            added[-1] if refine else None, cancelled=self.client_gone())
        if refine:
            added[-1] = new
        else:
            added.append(new)
        self.sessions.put(view, token)  # its size grew
        left = (view.image, ui.annotations(result, result.primary, added))
        return [ui.render_highlight(picture, new.mask),
                ui.added_markdown(new, len(added) - 1, result.classes, refine), left]

    @user_errors
    def compare(self, token) -> Iterator[list]:
        """Every severance variant on the session's proposals, one at a time (DeOP's first)."""
        view = self.sessions.get(token)
        if view is None:
            yield [gr.skip(), texts.EXPIRED if token else texts.NO_SESSION]
            return
        self.loader.ready.wait()
        _, opts = self.request_settings(view.request)
        runs = []
        for run in self.compute.compare(view.request["proposal_model"], view.image, view.request["vocabulary"], opts,
                                     view.result.image_size, cancelled=self.client_gone()):
            runs.append(run)
            gallery, table = ui.variant_views(view.image, runs, view.result.classes)
            yield [gallery, table]

    @user_errors
    def downloads(self, token) -> list[str]:
        """The full-size files of the session's result, made now (an answer does not pay for them): overlays,
        label PNGs, the per-class masks ZIP and the JSON with every segment as COCO RLE, the segments added
        by clicks included. Asked again with nothing new, the same files."""
        view = self.sessions.get(token)
        if view is None:
            raise gr.Error(texts.EXPIRED if token else texts.NO_SESSION)
        added = view.extra.get("added", [])
        made = view.extra.get("downloads")
        key = (id(view.result), tuple(id(a) for a in added))
        if made is None or made[0] != key or not all(Path(p).is_file() for p in made[1]):  # swept: made again
            made = (key, ui.downloads(view.image, view.result, self.results, added))
            view.extra["downloads"] = made
        return list(made[1])
