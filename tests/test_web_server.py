"""The app's handlers as plain methods of ``deop.web.server.Server``: inputs by name in, the outputs' values
out, no page, no HTTP. What the API tests check through a server, these check at the seam; the messages a
visitor reads come from here."""

from __future__ import annotations

import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SMALL_CONFIG, scene
from deop.clip.severance import COMPARED_VARIANTS
from deop.web import texts
from deop.web.server import SEGMENT_EVENT_OUTPUTS, Server

SKIP = {"__type__": "update"}  # gr.skip(): this output is left as it is


@pytest.fixture(scope="module")
def server(segmenter, tmp_path_factory):
    """A server whose segments cover little (two masks at most), so that uncovered pixels exist to click."""
    config = replace(SMALL_CONFIG, options=SMALL_CONFIG.options.with_overrides(max_masks=2))
    s = Server(config, calibrate=False, folder=tmp_path_factory.mktemp("app"))
    assert s.loader.ready.wait(120) and s.loader.error is None
    return s


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "scene.png"
    Image.fromarray(scene(seed=16)).save(path)
    return str(path)


def request(server: Server, image, **inputs) -> dict:
    return {**server.defaults, "image": image, "vocabulary": "sky, grass, ball", "state": None, **inputs}


def segmented(server: Server, image, **inputs) -> list[dict]:
    """Each streamed answer of /segment by output name."""
    return [dict(zip(SEGMENT_EVENT_OUTPUTS, out)) for out in server.segment(request(server, image, **inputs))]


@pytest.fixture(scope="module")
def session(server, photo):
    """(token, an uncovered pixel) after segmenting the photo."""
    *_, last = segmented(server, photo)
    view = server.sessions.get(last["state"])
    ys, xs = np.nonzero(view.result.work_segment_map < 0)
    assert len(xs), "the test needs an uncovered pixel"
    return last["state"], (int(xs[len(xs) // 2]), int(ys[len(ys) // 2]))


def test_segment_streams_the_one_pass_answer_then_the_complete_one(server, photo):
    first, last = segmented(server, photo)
    assert first["one_pass"][1] and first["files"] is None and "Running: Crop baseline" in first["run_status"]
    assert first["crop"] == {"__type__": "update", "value": None, "visible": True}
    assert first["chart"] is None and last["chart"].ndim == 3  # the first answer is the overlay; the chart after
    assert last["crop"]["value"][1] and last["run_status"].startswith("Done") and last["run"]["value"] == texts.RUN
    assert last["files"] is None  # made when asked: see test_downloads_*
    assert last["heatmap_classes"]["choices"] == ["sky", "grass", "ball"] and last["clicked"] == texts.CLICK_HINT
    assert server.sessions.get(last["state"]).request["vocabulary"] == "sky, grass, ball"
    timings = server.timings(last["state"])  # where the request's time went, for bench-app
    assert {"decode", "checks", "release", "answers"} <= timings.keys() and len(timings["answers"]) == 2
    assert {"pipeline", "render", "session", "gradio"} <= timings["answers"][0].keys()
    assert timings["answers"][1]["views"].keys() == {"one_pass", "crop", "latency", "chart", "files",
                                                     "heatmap_classes", "inspect"}
    assert server.timings("expired") is None


def test_a_rerun_answers_from_the_cache_or_says_why_not(server, photo, session):
    token, _ = session
    cheap = [dict(zip(SEGMENT_EVENT_OUTPUTS, out))
             for out in server.rerun(request(server, photo, vocabulary="tree, water", state=token))]
    assert cheap[-1]["run_status"].startswith("Cached re-run (vocabulary changed)") and cheap[-1]["run"] == SKIP
    assert len(cheap) == 1  # every stage cached: the complete answer at once, no intermediate frame
    costly, = server.rerun(request(server, photo, vocabulary="tree, water", points_per_side=6, state=token))
    costly = dict(zip(SEGMENT_EVENT_OUTPUTS, costly))
    status, button = costly["run_status"], costly["run"]
    assert status == texts.not_rerun(["points_per_side"]) and "/segment" in status
    assert button["value"] == "Segment (new settings: press to run SAM and CLIP again)"
    assert list(server.rerun(request(server, photo, vocabulary="tree, water", state=token))) == \
        [[SKIP] * len(SEGMENT_EVENT_OUTPUTS)]  # nothing changed
    assert list(server.rerun(request(server, photo, state="gone"))) == [[SKIP] * len(SEGMENT_EVENT_OUTPUTS)]


def test_the_button_says_when_an_edit_needs_new_proposals(server, photo, session):
    token, _ = session
    view = server.sessions.get(token)
    asked = {**view.request, "state": token}
    assert server.stale({**asked, "max_masks": 3})["value"].startswith("Segment (new settings")
    assert server.stale({**asked, "image": "another.png"})["value"].startswith("Segment (new image")
    assert server.stale({**asked, "none_threshold": 0.5})["value"] == texts.RUN  # the cache answers it
    assert server.stale({**asked, "state": None})["value"] == texts.RUN


def test_validation_names_each_bad_input_before_the_queue(server, photo):
    checks = server.validate(request(server, None, points_per_side="abc", fill_uncovered="no"))
    messages = [c["message"] for c in checks if not c["is_valid"]]
    assert messages == [texts.NO_IMAGE, "points_per_side must be a whole number, got 'abc'",
                        "fill_uncovered must be true or false, got 'no'"]
    assert len(checks) == len(server.input_names) + 1 and all(c["is_valid"] for c in server.validate(
        request(server, photo)))


def test_bad_clicks_are_named_and_added_segments_are_capped(server, session, monkeypatch):
    import gradio as gr

    token, (x, y) = session
    for bad in ("abc", None, 10**400):
        with pytest.raises(gr.Error, match="x must be a pixel position"):
            server.add_segment(bad, y, "add a segment", token)
    with pytest.raises(gr.Error, match=r"the point \(10000, .*\) lies outside the 160 x 120 image"):
        server.add_segment(10_000, y, "add a segment", token)
    with pytest.raises(gr.Error, match="mode must be one of inspect, add a segment"):
        server.add_segment(x, y, "erase", token)
    assert server.add_segment(x, y, "add a segment", "expired")[1] == texts.EXPIRED
    assert server.add_segment(x, y, "add a segment", None)[1] == texts.NO_SESSION
    monkeypatch.setattr(server, "max_added", 1)
    picture, first, overlay = server.add_segment(x, y, "add a segment", token)
    _, second, _ = server.add_segment(x, y, "add a segment", token)
    assert "Added segment 1" in first and any(label.startswith("+1 ") for _, label in overlay[1])
    assert second == texts.too_many_added(1) and picture.shape == (120, 160, 3)
    _, refined, _ = server.add_segment(x, y, texts.CLICK_MODES[2], token)
    assert "refined" in refined  # refining replaces the last one: the cap does not apply


def test_a_click_inspects_or_adds_and_a_legend_entry_lists_its_segments(server, photo):
    *_, last = segmented(server, photo, vocabulary="sky, grass")
    token, view = last["state"], server.sessions.get(last["state"])
    ys, xs = np.nonzero(view.result.work_segment_map >= 0)
    at = types.SimpleNamespace(index=[int(xs[0]), int(ys[0])])
    _, text, overlay = server.click_pixel(token, "inspect", at)
    assert text.startswith("**Segment ") and overlay == SKIP
    assert server.click_pixel(token, "inspect", types.SimpleNamespace(index=None))[1] == texts.CLICK_ON_IMAGE
    assert server.click_pixel(token, texts.CLICK_MODES[2], at)[1] == texts.ADD_FIRST
    label = view.result.classes[view.result.methods["one-pass"].segments[0].label]
    assert server.click_legend(token, types.SimpleNamespace(value={"label": label})).startswith(f"**{label}**")
    assert server.click_legend("expired", types.SimpleNamespace(value="sky")) == texts.EXPIRED
    assert server.heatmap("grass", token).shape == view.image.shape and server.heatmap("grass", "expired") is None


def test_compare_variants_yields_one_overlay_per_variant(server, session):
    token, _ = session
    *_, (gallery, table) = server.compare(token)
    assert len(gallery) == len(COMPARED_VARIANTS) and "same as DeOP: segments" in table
    assert list(server.compare("expired")) == [[SKIP, texts.EXPIRED]]


def test_an_example_is_plain_values_and_keeps_no_session(server, photo):
    kept = len(server.sessions)
    left, crop, latency, chart, files, inspect, status = server.example(photo, "sky, grass")
    assert left[1] and crop[1] and "total" in latency and status.startswith("Done") and files
    assert len(server.sessions) == kept


def test_a_preset_replaces_the_vocabulary_and_none_leaves_it(server):
    assert "aeroplane" in server.preset_vocabulary("voc", "cat") and server.preset_vocabulary("", "cat") == "cat"


def test_an_image_too_narrow_is_the_same_message_in_the_app(server, tmp_path):
    import gradio as gr

    path = tmp_path / "strip.png"
    Image.fromarray(np.full((2, 20000, 3), 90, dtype=np.uint8)).save(path)
    with pytest.raises(gr.Error, match="too narrow to segment: 20000 x 2 pixels, its long side more than 64 times"):
        list(server.segment(request(server, str(path))))


def test_a_bug_is_an_internal_error_with_an_id_never_a_traceback(server, photo, monkeypatch, caplog):
    import gradio as gr

    from deop.pipeline import Segmenter

    def broken(self, *args, **kwargs):
        raise KeyError("a bug")
        yield

    monkeypatch.setattr(Segmenter, "stream", broken)
    with caplog.at_level("ERROR", logger="deop.app"), pytest.raises(gr.Error) as info:
        list(server.segment(request(server, photo)))
    assert "internal error (id " in info.value.message and "KeyError" not in info.value.message


# -- downloads, made when asked --------------------------------------------------------------------------------
def _made(server) -> list[Path]:
    return sorted(server.results.glob("result-*")) if server.results.exists() else []


def test_downloads_are_written_only_when_asked_and_equal_what_an_answer_used_to_write(server, photo, tmp_path):
    """Nothing is written by an answer; asked, the files are byte for byte what the eager version wrote with
    every complete answer (``save_result`` of the kept working image and result), and asked again, the same."""
    from deop.export import save_result

    before = _made(server)
    *_, last = segmented(server, photo, vocabulary="sky, grass, box")
    token = last["state"]
    list(server.rerun(request(server, photo, vocabulary="sky, grass, box, ball", state=token)))
    assert _made(server) == before  # two answers and a re-run: nothing written
    files = server.downloads(token)
    assert len(_made(server)) == len(before) + 1
    view = server.sessions.get(token)
    eager = save_result(view.image, view.result, tmp_path / "eager", "segmentation", masks=True)
    made = {Path(f).name: Path(f) for f in files}
    assert sorted(made) == sorted(p.name for p in eager.values())
    for path in eager.values():
        if path.suffix in (".png", ".json"):
            assert made[path.name].read_bytes() == path.read_bytes(), path.name
        else:
            assert _zip_members(made[path.name]) == _zip_members(path)
    assert server.downloads(token) == files and len(_made(server)) == len(before) + 1  # asked again: the same


def _zip_members(path: Path) -> dict[str, bytes]:
    import zipfile

    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def test_downloads_include_the_segments_added_by_clicks(server, photo):
    import json
    import zipfile

    from deop import rle

    *_, last = segmented(server, photo, vocabulary="sky, grass, ball")
    token = last["state"]
    view = server.sessions.get(token)
    ys, xs = np.nonzero(view.result.work_segment_map < 0)
    x, y = int(xs[len(xs) // 2]), int(ys[len(ys) // 2])
    plain = server.downloads(token)
    server.add_segment(x, y, "add a segment", token)
    files = {Path(f).name: Path(f) for f in server.downloads(token)}
    assert sorted(files) == sorted(Path(f).name for f in plain) and set(files.values()).isdisjoint(map(Path, plain))
    seg = server.sessions.get(token).extra["added"][0]
    data = json.loads(files["segmentation.json"].read_text())
    added, = data["added_segments"]
    mask = rle.decode(added["mask"])
    assert mask.shape == view.result.image_size and added["area"] == int(mask.sum()) == int(seg.mask.sum())
    assert added["id"] == "+1" and added["label_index"] == seg.label and added["top5"][0][0] == seg.top5[0][0]
    labels = np.array(Image.open(files["segmentation_labels.png"]))
    assert (labels[mask] == (seg.label if seg.label >= 0 else 255)).all()  # on top of the method's labels
    with zipfile.ZipFile(files["segmentation_masks.zip"]) as z:
        listing = json.loads(z.read("classes.json"))["classes"]
    assert sum(c["pixels"] for c in listing) == int((labels != 255).sum())
    assert "added_segments" not in json.loads(Path(next(f for f in plain if f.endswith(".json"))).read_text())


def test_downloads_without_a_session_say_so(server):
    import gradio as gr

    with pytest.raises(gr.Error, match="no longer kept"):
        server.downloads("expired")
    with pytest.raises(gr.Error, match="Segment an image first"):
        server.downloads(None)
