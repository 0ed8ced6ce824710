"""The app under faults: each bad upload, time-out and GPU out-of-memory gets a message, and the next request
is served; the server hands out only its own outputs and the example assets."""

from __future__ import annotations

import io
import struct
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import scene

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


@pytest.fixture
def good_image(tmp_path):
    path = tmp_path / "good.png"
    Image.fromarray(scene(seed=21)).save(path)
    return str(path)


def _png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG header that promises 900 megapixels, in a few hundred bytes."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(width + 1), 9))
            + chunk(b"IEND", b""))


def _truncated_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(scene(seed=22)).save(buf, format="PNG")
    return buf.getvalue()[:200]


BAD_UPLOADS = {
    "notes.png": (b"these are notes, not pixels", "not an image file: notes.png"),
    "empty.jpg": (b"", "empty"),
    "cut.png": (_truncated_png(), "truncated or corrupt"),
    "bomb.png": (_png_bomb(), "too large: 900000000 pixels"),
}


@pytest.mark.parametrize("name", list(BAD_UPLOADS))
def test_bad_uploads_get_a_message_and_the_next_request_works(client, tmp_path, good_image, name):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    data, message = BAD_UPLOADS[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(AppError) as info:
        client.predict(handle_file(str(path)), "sky, grass", "one-pass", api_name="/segment")
    assert message in str(info.value)
    assert "/tmp" not in str(info.value)  # the server's upload folder is not shown
    out = client.predict(handle_file(good_image), "sky, grass", "one-pass", api_name="/segment")
    assert out[0]["annotations"]


def test_gpu_out_of_memory_is_a_message_and_the_next_request_works(client, good_image, monkeypatch):
    """No GPU here: the proposal stage raises the error torch raises on a full GPU, once."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from deop.proposers import Proposer

    real = Proposer.propose
    calls = []

    def out_of_memory_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(Proposer, "propose", out_of_memory_once)
    with pytest.raises(AppError, match="ran out of memory"):
        client.predict(handle_file(good_image), "sky, grass", "one-pass", 13, api_name="/segment")
    out = client.predict(handle_file(good_image), "sky, grass", "one-pass", 13, api_name="/segment")
    assert out[0]["annotations"] and len(calls) == 2


def test_a_request_past_the_time_limit_is_cut_and_the_app_goes_on(segmenter, good_image):
    """48 points per side means 2304 SAM prompts, over a minute on this CPU even with the tiny SAM; the
    dense method needs no SAM (about 1 s here), so the limit leaves room on both sides. Without the cost
    estimate (calibrate=False) the request starts and is stopped between two batches of prompts."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from conftest import SMALL_CONFIG, serve
    from deop.web.app import build_app

    with serve(build_app(SMALL_CONFIG, time_limit=8.0, calibrate=False)) as url:
        client = Client(url, verbose=False)
        with pytest.raises(AppError, match="8 s time limit during mask proposals"):
            client.predict(handle_file(good_image), "sky, grass", "one-pass", 48, api_name="/segment")
        out = client.predict(handle_file(good_image), "sky, grass", "dense", api_name="/segment")
        assert out[0]["annotations"]


def test_a_request_that_cannot_fit_the_time_limit_is_refused_up_front(segmenter, good_image):
    """With this device's costs measured at start, the heaviest settings the sliders allow are refused
    before they hold the queue, with the settings to lower; a request that fits still runs."""
    import time

    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from conftest import SMALL_CONFIG, serve
    from deop.web.app import build_app

    with serve(build_app(SMALL_CONFIG, time_limit=8.0)) as url:
        client = Client(url, verbose=False)
        client.predict(handle_file(good_image), "sky", "dense", api_name="/segment")  # models and costs loaded
        start = time.monotonic()
        with pytest.raises(AppError, match=r"would take about \d+ s here, over the 8 s limit.*SAM points per side"):
            client.predict(handle_file(good_image), "sky, grass", "both", 48, api_name="/segment",
                           clip_size=1024, max_side=2048, max_masks=300)
        assert time.monotonic() - start < 5  # refused, not run
        assert client.predict(handle_file(good_image), "sky, grass", "one-pass", api_name="/segment")[0]["annotations"]


def _status(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=30).status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_server_serves_only_its_outputs_and_the_examples(app_url, client, good_image):
    from gradio_client import handle_file

    file_url = app_url + "gradio_api/file="
    assert _status(file_url + str(ROOT / "assets" / "chelsea.jpg")) == 200
    for path in ("/etc/passwd", str(ROOT / "app.py"), str(ROOT / "assets" / ".." / "app.py"),
                 str(ROOT / "requirements.txt")):
        assert _status(file_url + path) == 403, path
    # our own output folder is not served directly: Gradio copies each returned file into its cache
    client.predict(handle_file(good_image), "sky", "one-pass", api_name="/segment")
    files = client.predict(api_name="/downloads")
    from deop.web.files import work_dir

    ours = sorted((work_dir() / "results").glob("result-*/segmentation.json"))
    assert ours and _status(file_url + str(ours[-1])) == 403
    assert any(f.endswith("segmentation.json") for f in files)


def test_cached_images_are_replaced_not_rewritten_under_a_reader(tmp_path):
    """Identical renders share one cache path; a client still reading the first copy keeps whole bytes."""
    import os

    from gradio import processing_utils

    from deop.web.workarounds import atomic_image_cache

    atomic_image_cache()
    image = Image.fromarray(scene(seed=30))
    path = processing_utils.save_pil_to_cache(image, str(tmp_path), format="png")
    with open(path, "rb") as reader:
        first = os.fstat(reader.fileno()).st_ino
        assert processing_utils.save_pil_to_cache(image, str(tmp_path), format="png") == path
        assert os.stat(path).st_ino != first  # a new file renamed into place, the reader's one untouched
        assert reader.read() == Path(path).read_bytes()
    assert not [p for p in Path(path).parent.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_a_bug_is_shown_as_an_internal_error_with_an_id_and_logged(client, good_image, monkeypatch, caplog):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from deop.pipeline import Segmenter

    def broken(self, *args, **kwargs):
        raise KeyError("a bug")
        yield

    monkeypatch.setattr(Segmenter, "stream", broken)
    with caplog.at_level("ERROR", logger="deop.app"), pytest.raises(AppError) as info:
        client.predict(handle_file(good_image), "sky", "one-pass", api_name="/segment")
    message = str(info.value)
    assert "internal error (id " in message and "KeyError" not in message
    error_id = message.split("(id ")[1].split(")")[0]
    assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records)
    monkeypatch.undo()
    assert client.predict(handle_file(good_image), "sky", "one-pass", api_name="/segment")[0]["annotations"]
