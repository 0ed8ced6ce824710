"""The Gradio app end to end through gradio_client, on random weights and small settings."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from conftest import scene
from deop import rle

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def test_segment_api_returns_overlays_latency_and_downloads(client, tmp_path):
    from gradio_client import handle_file

    path = tmp_path / "scene.png"
    Image.fromarray(scene(seed=8)).save(path)
    left, right, latency, chart, files, *_ = client.predict(handle_file(str(path)), "sky, grass, ball",
                                                            "both", api_name="/segment")
    assert files is None  # the downloads are made when asked for
    files = client.predict(api_name="/downloads")
    right = right.get("value", right)  # the crop panel comes as a visibility update
    assert left["annotations"] and right["annotations"]
    labels = {a["label"] for a in left["annotations"]}
    assert labels <= {"sky", "grass", "ball"} and labels
    assert "One pass (DeOP)" in latency and "Crop baseline" in latency and "faster" in latency
    names = sorted(f.rsplit("/", 1)[-1] for f in files)
    assert "segmentation.json" in names and "segmentation_masks.zip" in names
    data = json.loads(Path(next(f for f in files if f.endswith("segmentation.json"))).read_text())
    segments = data["methods"]["one-pass"]["segments"]
    assert segments and all(rle.area(data["segment_masks"][s["id"]]) == s["area"] for s in segments)
    # the same image with another vocabulary reuses the cache and says so
    _, _, latency2, *_ = client.predict(handle_file(str(path)), "sky, grass, box", "both", api_name="/segment")
    assert "reused from cache" in latency2


def test_bad_vocabulary_is_a_message_and_the_app_keeps_serving(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    path = tmp_path / "scene.png"
    Image.fromarray(scene(seed=9)).save(path)
    with pytest.raises(AppError, match="at least one class"):
        client.predict(handle_file(str(path)), " , ", "one-pass", api_name="/segment")
    out = client.predict(handle_file(str(path)), "sky", "one-pass", api_name="/segment")
    assert out[0]["annotations"]


def test_page_shows_status_and_random_weights_banner(app_url):
    html = urllib.request.urlopen(app_url, timeout=30).read().decode()
    assert "RANDOM WEIGHTS" in html


def test_without_weights_the_page_loads_and_explains(tmp_path):
    """No checkpoint and no downloads: the page still serves, and Segment answers with the fix."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from conftest import serve
    from deop import SegmenterConfig
    from deop.web.app import build_app

    config = SegmenterConfig(device="cpu", checkpoint_dir=str(tmp_path / "empty"), download=False)
    with serve(build_app(config)) as url:
        assert urllib.request.urlopen(url, timeout=30).status == 200
        path = tmp_path / "scene.png"
        Image.fromarray(scene(seed=3)).save(path)
        with pytest.raises(AppError) as info:
            Client(url, verbose=False).predict(handle_file(str(path)), "cat", "one-pass", api_name="/segment")
        message = str(info.value)
        assert "sam_vit_b_01ec64.pth" in message and "--random-weights" in message
        assert "RANDOM WEIGHTS" not in urllib.request.urlopen(url, timeout=30).read().decode()
