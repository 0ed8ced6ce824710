"""One test per entry of ``deop/web/workarounds.py``: each checks the Gradio behaviour the entry works around
(so it fails when a Gradio release changes it: then revisit the entry, or delete it) and that the entry
still does its job through Gradio's own code path."""

from __future__ import annotations

import asyncio
import base64
import inspect
import os
import re
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from gradio.data_classes import FileData
from PIL import Image

from deop.web import workarounds
from deop.web.files import ASSETS


def _preprocessed(demo: gr.Blocks, inputs: list) -> list:
    """What Gradio hands the handler of the Blocks' first event for these raw inputs (its own path:
    ``Blocks.preprocess_data``, as a request takes it)."""
    return asyncio.run(demo.preprocess_data(demo.fns[0], inputs, None))


def _one_event(*components) -> gr.Blocks:
    with gr.Blocks() as demo:
        made = [c() for c in components]
        gr.Button().click(lambda *values: None, made, None)
    return demo


def _png(path: Path) -> Path:
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(path)
    return path


def test_the_release_checked_is_the_one_installed_or_the_entries_are_revisited():
    """A new Gradio release: run this file, then move CHECKED_WITH (requirements.txt allows >=6,<7)."""
    assert gr.__version__.split(".")[0] == workarounds.CHECKED_WITH.split(".")[0] == "6"


def test_raw_input_gradio_coerces_or_fails_generically_and_the_raw_value_reaches_the_handler():
    # the behaviour worked around: Gradio's own preprocessing lets "no" through a Checkbox as a (truthy) text,
    # 10.7 through an integer Slider, and fails on a text in a Slider with an error naming no input
    assert gr.Checkbox().preprocess("no") == "no" and gr.Slider(4, 48, step=1).preprocess(10.7) == 10.7
    stock = _one_event(lambda: gr.Slider(4, 48, step=1))
    with pytest.raises(Exception, match="Could not preprocess input component at index 0") as info:
        _preprocessed(stock, ["abc"])
    assert not isinstance(info.value, gr.Error)
    raw = _one_event(lambda: workarounds.raw_input(gr.Slider(4, 48, step=1)))
    assert _preprocessed(raw, ["abc"]) == ["abc"]  # Gradio calls the instance's preprocess


def test_image_input_gradio_takes_any_path_and_opens_it_and_ours_takes_only_uploads(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))
    outside = _png(tmp_path / "outside.png")
    (tmp_path / "notes.png").write_text("not pixels")
    stock = gr.Image(type="filepath")
    assert stock.preprocess(FileData(path=str(outside))) == str(outside)  # a file never uploaded: accepted
    with pytest.raises(Exception) as info:  # a non-image: PIL's error, before our loader could name it
        stock.preprocess(FileData(path=str(tmp_path / "notes.png")))
    assert not isinstance(info.value, gr.Error)
    ours = workarounds.image_input()
    with pytest.raises(gr.Error, match="image: upload the file first"):
        ours.preprocess(FileData(path=str(outside)))
    (tmp_path / "uploads" / "abc").mkdir(parents=True)
    uploaded = tmp_path / "uploads" / "abc" / "notes.png"
    uploaded.write_text("not pixels")
    assert ours.preprocess(FileData(path=str(uploaded))) == str(uploaded.resolve())  # unopened: our loader's job
    example = ASSETS / "shapes.png"
    assert ours.preprocess(FileData(path=str(example))) == str(example.resolve())
    demo = _one_event(workarounds.image_input)  # through Gradio's own preprocessing, as a raw API call sends it
    with pytest.raises(gr.Error, match="image: upload the file first"):
        _preprocessed(demo, [{"path": str(outside)}])


def test_a_data_url_gradio_decodes_and_reencodes_it_and_ours_keeps_the_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))
    data = _png(tmp_path / "a.png").read_bytes()
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    stock = gr.Image(type="filepath").preprocess(FileData(path="x.png", url=url))
    assert Path(stock).read_bytes() != data  # decoded with PIL and written again (as webp)
    with pytest.raises(Exception) as info:
        gr.Image(type="filepath").preprocess(FileData(path="x.png", url="data:image/png;base64,bm8gaW1hZ2U="))
    assert not isinstance(info.value, gr.Error)
    ours = workarounds.image_input().preprocess(FileData(path="x.png", url=url))
    assert Path(ours).read_bytes() == data and Path(ours).parent == workarounds.data_url_folder()
    with pytest.raises(gr.Error, match="not a base64-encoded image"):
        workarounds.data_url_file("data:image/png;base64,!!")


def test_pad_missing_inputs_gradio_refuses_too_few_inputs_and_ours_fills_the_defaults():
    demo = _one_event(lambda: gr.Textbox(value="a"), lambda: gr.Number(value=7), lambda: gr.Checkbox(value=True))
    with pytest.raises(ValueError, match="didn't receive enough input values"):
        _preprocessed(demo, ["x"])
    assert "self.validate_inputs(" in inspect.getsource(gr.Blocks.preprocess_data)  # the method replaced
    workarounds.pad_missing_inputs(demo)
    assert _preprocessed(demo, ["x"]) == ["x", 7, True]


def test_client_alive_reads_gradio_s_private_queue():
    from gradio import queueing
    from gradio.context import LocalContext

    # the names the probe reads, and the flag Gradio clears when a client's stream closes
    assert "self.alive = True" in inspect.getsource(queueing.Event.__init__)
    assert re.search(r"\.alive = False", inspect.getsource(queueing))
    with gr.Blocks() as demo:
        gr.Button()
    demo.queue()
    assert isinstance(demo._queue.event_ids_to_events, dict)
    event = type("Event", (), {"alive": True})()
    demo._queue.event_ids_to_events["e1"] = event
    token = LocalContext.event_id.set("e1")
    try:
        alive = workarounds.client_alive(demo)
        assert alive() is True
        event.alive = False
        assert alive() is False
    finally:
        LocalContext.event_id.reset(token)
    assert workarounds.client_alive(demo)() is True  # no request of its own: the client counts as present


def test_examples_cache_and_the_example_event_gradio_reads_the_folder_and_names_the_event(tmp_path):
    image, before = str(ASSETS / "shapes.png"), os.environ.get("GRADIO_EXAMPLES_CACHE")
    with gr.Blocks() as demo:
        box, out = gr.Image(type="filepath"), gr.Textbox()
        with workarounds.examples_cache(tmp_path / "examples"):
            examples = gr.Examples([[image]], [box], [out], fn=lambda path: "x", cache_examples=True,
                                   cache_mode="lazy")
    assert Path(examples.cached_folder).is_relative_to(tmp_path / "examples")
    assert os.environ.get("GRADIO_EXAMPLES_CACHE") == before  # only while the block is made
    events = workarounds.example_events(demo)
    assert len(events) == 1 and events[0].fn.__name__ == workarounds.EXAMPLE_EVENT


def test_example_copies_are_where_gradio_caches_a_file(tmp_path, monkeypatch):
    from gradio import processing_utils

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    image = ASSETS / "shapes.png"
    copy = processing_utils.save_file_to_cache(image, str(workarounds.upload_folder()))
    assert [Path(copy)] == workarounds.example_copies([image])


def test_atomic_image_cache_gradio_rewrites_in_place_and_ours_renames_at_the_same_path(tmp_path):
    from gradio import processing_utils as pu

    workarounds.atomic_image_cache()
    stock, ours = pu.save_pil_to_cache.stock, pu.save_pil_to_cache
    image = Image.fromarray(np.full((8, 8, 3), 40, dtype=np.uint8))
    path = stock(image, str(tmp_path / "stock"), format="png")
    first = os.stat(path).st_ino
    assert stock(image, str(tmp_path / "stock"), format="png") == path and os.stat(path).st_ino == first  # in place
    again = ours(image, str(tmp_path / "stock"), format="png")
    assert again == path and os.stat(path).st_ino != first  # the same path, a new file renamed into place
    # every caller goes through the module's attribute, which is what is replaced
    root = Path(pu.__file__).parent
    imported = [p for p in root.rglob("*.py") if re.search(r"import[^\n]*\bsave_pil_to_cache\b", p.read_text())]
    assert imported == []
