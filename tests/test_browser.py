"""The app in a real browser: headless Debian Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import scene
from deop.bench.browser import CHROMIUM_FLAGS

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
pytestmark = [pytest.mark.browser, pytest.mark.slow]

if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
    if os.environ.get("DEOP_REQUIRE_BROWSER"):
        raise RuntimeError("DEOP_REQUIRE_BROWSER is set but /usr/bin/chromium is missing (apt-get install chromium)")
    pytest.skip("Chromium is not installed (/usr/bin/chromium); .ci/run installs it", allow_module_level=True)


@pytest.fixture(scope="module")
def page_url(app_url):
    return app_url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.mark.parametrize("viewport,name", [((1366, 900), "app-laptop"), ((390, 844), "app-phone")])
def test_upload_type_segment_and_see_both_methods(browser, page_url, tmp_path, viewport, name):
    path = tmp_path / "scene.png"
    Image.fromarray(scene(seed=12)).save(path)
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    page.goto(page_url, wait_until="load")  # a status timer polls, so the network is never idle
    page.wait_for_selector("#random-banner", timeout=60_000)
    assert "RANDOM WEIGHTS" in page.inner_text("#random-banner")
    page.locator("input[type=file]").first.set_input_files(str(path))
    box = page.get_by_label("Classes")
    box.fill("sky, grass, ball")
    page.get_by_role("button", name="Segment", exact=True).click()
    page.wait_for_selector("#run-status :text('Done')", timeout=120_000)
    latency = page.inner_text("#latency")
    assert "One pass (DeOP)" in latency and "Crop baseline" in latency and "total" in latency
    # every stage on one line (a phone once showed "classificati/on"), and the table within the page
    heights = page.eval_on_selector_all("#latency tbody tr", "rows => rows.map(r => r.getBoundingClientRect().height)")
    assert len(heights) == 5 and max(heights) - min(heights) < 1, heights
    right = page.eval_on_selector("#latency table", "t => t.getBoundingClientRect().right")
    assert right <= viewport[0]
    page.wait_for_timeout(500)
    body = page.inner_text("body")
    assert any(c in body for c in ("sky", "grass", "ball"))
    # the four result tabs in sight, on a phone too: none behind Gradio's "..." menu (a phone showed only the first)
    for tab in ("Inspect a segment", "Compare variants", "Class heatmap", "Downloads"):
        found = page.get_by_role("tab", name=tab, exact=True)
        assert found.is_visible() and found.bounding_box()["x"] + found.bounding_box()["width"] <= viewport[0], tab
    assert not page.get_by_role("button", name="More tabs").is_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    page.close()


def _inside_largest_segment(server) -> tuple[float, float]:
    """(x, y) as fractions of the image: the pixel farthest from the edge of the largest segment of the
    session used last (this test's)."""
    import cv2

    view = next(reversed(server.sessions._items.values()))[0]
    segments = view.result.work_segment_map
    ids, counts = np.unique(segments[segments >= 0], return_counts=True)
    mask = (segments == ids[np.argmax(counts)]).astype(np.uint8)
    depth = cv2.distanceTransform(np.pad(mask, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(depth), depth.shape)
    return (x + 0.5) / segments.shape[1], (y + 0.5) / segments.shape[0]


def test_click_a_segment_and_a_legend_entry_to_see_top5(browser, page_url, app_served, tmp_path):
    path = tmp_path / "scene.png"
    Image.fromarray(scene(seed=13)).save(path)
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.goto(page_url, wait_until="load")
    page.locator("input[type=file]").first.set_input_files(str(path))
    page.get_by_label("Classes").fill("sky, grass, ball")
    page.get_by_role("button", name="Segment", exact=True).click()
    page.wait_for_selector("#run-status :text('Done')", timeout=120_000)
    inspect = page.locator("#inspect img")
    inspect.wait_for(timeout=30_000)
    # the deepest pixel of the session's largest SAM segment (a fixed point may lie where a random SAM left
    # no segment, and a click there adds one instead of listing a top-5)
    inspect.scroll_into_view_if_needed()
    box = inspect.bounding_box()
    fx, fy = _inside_largest_segment(app_served[0].deop)
    inspect.click(position={"x": fx * box["width"], "y": fy * box["height"]})
    page.wait_for_function("() => document.querySelector('#clicked').innerText.includes('Segment ')",
                           timeout=30_000)
    texts = [page.inner_text("#clicked")]
    assert "Segment " in texts[-1] and "One pass (DeOP):" in texts[-1] and "Crop baseline:" in texts[-1], texts
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app-inspect.png"), full_page=True)
    # a legend entry of the one-pass overlay lists the segments of that class
    legend = page.locator("button.legend-item").first
    name = legend.inner_text().strip()
    legend.click()
    page.wait_for_function(f"() => document.querySelector('#clicked').innerText.startsWith({name!r})",
                           timeout=30_000)
    assert name in ("sky", "grass", "ball")
    page.close()


VIEWPORTS = {"laptop": (1366, 900), "phone": (390, 844)}


def _screenshots(page, stem: str) -> None:
    """The page as it stands, full length, on a laptop and on a phone: artifacts/<stem>-laptop.png, -phone.png."""
    ARTIFACTS.mkdir(exist_ok=True)
    for device, (width, height) in VIEWPORTS.items():
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(300)
        page.screenshot(path=str(ARTIFACTS / f"{stem}-{device}.png"), full_page=True)


def _new_page(browser, url, width=1366, height=900):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url, wait_until="load")
    page.wait_for_selector("#random-banner", timeout=60_000)
    return page


def test_the_one_pass_answer_shows_before_the_crop_baseline(browser, page_url, tmp_path, monkeypatch):
    """The handler streams: the one-pass overlay, its latency column and the inspector appear while the
    crops are still being encoded (made slow here), and the crop baseline fills in after."""
    import time

    import deop.pipeline

    real = deop.pipeline.encode_crops

    def slow_crops(*args, **kwargs):
        time.sleep(4)
        return real(*args, **kwargs)

    monkeypatch.setattr(deop.pipeline, "encode_crops", slow_crops)
    path = tmp_path / "scene.png"
    Image.fromarray(scene(seed=14)).save(path)
    page = _new_page(browser, page_url)
    page.locator("input[type=file]").first.set_input_files(str(path))
    page.get_by_label("Classes").fill("sky, grass, ball")
    page.get_by_role("button", name="Segment", exact=True).click()
    page.wait_for_selector("#one-pass img", timeout=120_000)
    assert "Running: Crop baseline" in page.inner_text("#run-status")
    assert page.locator("#crop img").count() == 0 and "running…" in page.inner_text("#latency")
    page.wait_for_selector("#inspect img", timeout=30_000)
    page.wait_for_selector("#run-status :text('Done')", timeout=120_000)
    page.wait_for_selector("#crop img", timeout=30_000)
    assert "running…" not in page.inner_text("#latency")
    page.close()


def test_segment_without_an_image_says_so_beside_the_input_and_marks_no_output(browser, page_url):
    page = _new_page(browser, page_url)
    page.get_by_role("button", name="Segment", exact=True).click()
    page.wait_for_selector("text=Upload an image first (or click an example).", timeout=30_000)
    page.wait_for_timeout(1000)
    body = page.inner_text("body")
    assert "Error" not in body  # no red badge on the outputs, no generic toast
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app-no-image.png"), full_page=True)
    page.close()


def test_examples_are_cached_lazily_the_first_visitor_pays_once(browser, page_url, monkeypatch):
    from deop.pipeline import Segmenter

    calls = []
    real = Segmenter.stream

    def counted(self, *args, **kwargs):
        calls.append(1)
        yield from real(self, *args, **kwargs)

    monkeypatch.setattr(Segmenter, "stream", counted)
    for visitor in range(2):
        page = _new_page(browser, page_url)
        page.get_by_text("ball, box, grass, sky").first.click()
        page.wait_for_selector("#run-status :text('Done')", timeout=120_000)
        page.wait_for_selector("#one-pass img", timeout=30_000)
        assert len(calls) == 1, f"visitor {visitor}: {len(calls)} runs"
        page.close()


def test_closing_the_page_stops_its_request_and_frees_the_queue(browser, page_url, tmp_path, monkeypatch):
    """The request of a closed tab stops at its next step (here a proposal stage made to take a minute,
    checking its deadline as SAM's batches do), so the next user's request is answered at once."""
    import time

    from gradio_client import Client, handle_file

    from deop.proposers import Proposer

    real, stopped = Proposer.propose, []

    def endless(self, image, config, deadline=None):
        try:
            for _ in range(600):
                deadline.check("mask proposals")
                time.sleep(0.1)
        except Exception as exc:
            stopped.append(type(exc).__name__)
            raise
        return real(self, image, config, deadline)

    path = tmp_path / "scene.png"
    Image.fromarray(scene(seed=15)).save(path)
    monkeypatch.setattr(Proposer, "propose", endless)
    page = _new_page(browser, page_url)
    page.locator("input[type=file]").first.set_input_files(str(path))
    page.get_by_role("button", name="Segment", exact=True).click()
    page.wait_for_timeout(3000)
    page.close()
    monkeypatch.setattr(Proposer, "propose", real)
    start = time.monotonic()
    out = Client(page_url, verbose=False).predict(handle_file(str(path)), "sky", "dense", api_name="/segment")
    assert out[0]["annotations"] and time.monotonic() - start < 30
    assert stopped == ["Cancelled"]


def _segment_in(page, path, vocabulary="sky, grass, ball"):
    page.locator("input[type=file]").first.set_input_files(str(path))
    page.get_by_label("Classes").fill(vocabulary)
    page.get_by_role("button", name="Segment", exact=True).click()
    try:
        page.wait_for_selector("#run-status :text('Done')", timeout=120_000)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "failed-segment.png"), full_page=True)
        raise


def test_a_click_on_an_uncovered_pixel_adds_a_segment_to_the_legend(browser, sparse_app, tmp_path):
    demo, url = sparse_app
    path = tmp_path / "scene.png"
    Image.fromarray(scene(seed=16)).save(path)
    page = _new_page(browser, url)
    _segment_in(page, path)
    view = max(demo.deop.sessions._items.values(), key=lambda item: item[2])[0]  # the newest session's
    ys, xs = np.nonzero(view.result.work_segment_map < 0)
    assert len(xs), "the test needs an uncovered pixel"
    x, y = int(xs[len(xs) // 2]), int(ys[len(ys) // 2])
    before = page.locator("#one-pass button.legend-item").all_inner_texts()
    inspect = page.locator("#inspect img")
    inspect.scroll_into_view_if_needed()
    box = inspect.bounding_box()
    h, w = view.image.shape[:2]
    inspect.click(position={"x": (x + 0.5) * box["width"] / w, "y": (y + 0.5) * box["height"] / h})
    page.wait_for_selector("#clicked :text('Added segment 1')", timeout=30_000)
    page.wait_for_function("n => document.querySelectorAll('#one-pass button.legend-item').length > n",
                           arg=len(before), timeout=30_000)
    after = page.locator("#one-pass button.legend-item").all_inner_texts()
    assert [t for t in after if t.startswith("+1 ")] and "no new encoder pass" in page.inner_text("#clicked")
    _screenshots(page, "app-added")
    page.close()


def test_the_compare_tab_shows_one_overlay_per_variant(browser, page_url, tmp_path):
    path = tmp_path / "scene.png"
    Image.fromarray(scene(seed=17)).save(path)
    page = _new_page(browser, page_url)
    _segment_in(page, path)
    page.get_by_role("tab", name="Compare variants").click()
    page.get_by_role("button", name="Compare the severance variants").click()
    page.wait_for_function("() => document.querySelectorAll('#variants img').length >= 6", timeout=120_000)
    page.wait_for_timeout(500)
    rows = [round(img.bounding_box()["y"]) for img in page.locator("#variants img").all()[:3]]
    assert len(set(rows)) == 1, rows  # a grid: the first three overlays side by side, not one per row
    table = page.inner_text("#variants-table")
    for variant in ("deop", "maskclip", "sclip", "clearclip", "naclip", "none"):
        assert variant in table
    _screenshots(page, "app-compare")
    page.close()


def test_a_vocabulary_edit_re_runs_by_itself_once_from_the_cache(browser, page_url, tmp_path, monkeypatch):
    """Typing a new class re-runs once the typing pauses (debounced in the browser), without SAM or the
    CLIP pass; a setting that needs new proposals makes the button say so instead."""
    import deop.pipeline
    from deop.pipeline import Segmenter
    from deop.proposers import Proposer

    path = tmp_path / "scene.png"
    Image.fromarray(scene(seed=18)).save(path)
    page = _new_page(browser, page_url)
    _segment_in(page, path, "sky, grass")
    calls = {"stream": 0, "sam": 0, "clip": 0}
    for owner, name, key in ((Segmenter, "stream", "stream"), (Proposer, "propose", "sam"),
                             (deop.pipeline, "dense_features", "clip")):
        original = getattr(owner, name)
        if key == "stream":
            def wrapped(*a, _o=original, **k):
                calls["stream"] += 1
                yield from _o(*a, **k)
        else:
            def wrapped(*a, _o=original, _k=key, **k):
                calls[_k] += 1
                return _o(*a, **k)
        monkeypatch.setattr(owner, name, wrapped)
    page.wait_for_timeout(1000)  # the page's re-run of the filled vocabulary (the same as answered: nothing) passes
    reruns = []  # queue requests carrying the image: the re-runs (the status timer's and the heatmap's carry none)
    page.on("request", lambda r: reruns.append(r.post_data) if "queue/join" in r.url and '"path"' in (r.post_data or "")
            else None)
    box = page.get_by_label("Classes")
    box.click()
    box.press("End")
    box.type(", ball, tree", delay=60)
    page.wait_for_function("() => { const t = document.querySelector('#run-status').innerText; "
                           "return t.includes('Cached re-run (vocabulary changed)') && t.includes('Done'); }",
                           timeout=60_000)
    page.wait_for_timeout(1000)
    assert calls == {"stream": 1, "sam": 0, "clip": 0}
    # one request, no empty one before it
    assert len(reruns) == 1 and '"sky, grass, ball, tree"' in reruns[0], [r.split("FileData")[-1][:40] for r in reruns]
    assert "tree" in page.inner_text("#latency") or "reused from cache" in page.inner_text("#latency")
    box.fill("sky, grass, ball")  # no keystroke, as a mouse paste, a drop or the browser's autofill
    for _ in range(100):
        if calls["stream"] == 2:
            break
        page.wait_for_timeout(100)
    assert calls == {"stream": 2, "sam": 0, "clip": 0} and '"sky, grass, ball"' in reruns[-1]
    page.wait_for_selector("#run-status:has-text('Done')", timeout=30_000)
    page.get_by_label("one-pass", exact=True).check()  # the method: the crops would have to run
    page.wait_for_selector("#run:has-text('press to run SAM and CLIP again')", timeout=30_000)
    assert calls["stream"] == 2
    page.close()


def test_downloads_are_made_when_asked_and_emptied_by_an_added_segment(browser, sparse_app, tmp_path):
    """The Downloads tab is empty after an answer; its button makes the files of what is shown; a segment added
    by a click empties the list (its files were made before it), and the button makes them again."""
    demo, url = sparse_app
    path = tmp_path / "scene.png"
    Image.fromarray(scene(seed=19)).save(path)
    listed = "() => document.querySelector('#files').innerText.includes('segmentation_masks')"
    page = _new_page(browser, url)
    _segment_in(page, path)
    page.get_by_role("tab", name="Downloads").click()
    assert "segmentation_masks" not in page.inner_text("#files")
    page.get_by_role("button", name="Make the files").click()
    page.wait_for_function(listed, timeout=30_000)
    assert "segmentation_labels" in page.inner_text("#files") and ".json" in page.inner_text("#files")
    view = max(demo.deop.sessions._items.values(), key=lambda item: item[2])[0]
    ys, xs = np.nonzero(view.result.work_segment_map < 0)
    page.get_by_role("tab", name="Inspect a segment").click()
    page.get_by_label("add a segment", exact=True).check()
    inspect = page.locator("#inspect img")
    inspect.scroll_into_view_if_needed()
    box, (h, w) = inspect.bounding_box(), view.image.shape[:2]
    x, y = int(xs[len(xs) // 2]), int(ys[len(ys) // 2])
    inspect.click(position={"x": (x + 0.5) * box["width"] / w, "y": (y + 0.5) * box["height"] / h})
    page.wait_for_selector("#clicked :text('Added segment 1')", timeout=30_000)
    page.get_by_role("tab", name="Downloads").click()
    page.wait_for_function(f"() => !({listed})()", timeout=30_000)
    page.get_by_role("button", name="Make the files").click()
    page.wait_for_function(listed, timeout=30_000)
    page.close()
