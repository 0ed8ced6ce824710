"""Many users at once: exact per-request results, a full queue answered with a message, bounded memory."""

from __future__ import annotations

import gc
from dataclasses import replace

import numpy as np
import psutil
import pytest
from PIL import Image

from conftest import scene

pytestmark = pytest.mark.slow


def _labels(files) -> np.ndarray:
    path = next(f for f in files if f.endswith("segmentation_labels.png"))
    return np.array(Image.open(path))


def test_concurrent_clients_get_exactly_their_own_results(app_url, tmp_path):
    from gradio_client import Client, handle_file

    jobs = []
    for i, voc in enumerate(["sky, grass", "ball, box", "grass, ball, sky", "box", "sky, box", "grass",
                             "ball, sky", "box, grass"]):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(scene(seed=100 + i)).save(path)
        jobs.append((str(path), voc))
    client = Client(app_url, verbose=False)

    def labels(c, p, v) -> np.ndarray:  # the session's downloads, made when asked
        c.predict(handle_file(p), v, "one-pass", api_name="/segment")
        return _labels(c.predict(api_name="/downloads"))

    alone = [labels(client, p, v) for p, v in jobs]
    clients = [Client(app_url, verbose=False) for _ in jobs]
    futures = [c.submit(handle_file(p), v, "one-pass", api_name="/segment") for c, (p, v) in zip(clients, jobs)]
    for f in futures:
        f.result(timeout=300)
    together = [_labels(c.predict(api_name="/downloads")) for c in clients]
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)


def test_a_burst_past_the_queue_gets_busy_and_the_server_goes_on(segmenter, tmp_path):
    from gradio_client import Client, handle_file

    from conftest import SMALL_CONFIG, serve
    from deop.web.app import build_app

    with serve(build_app(SMALL_CONFIG, queue_size=2)) as url:
        path = tmp_path / "x.png"
        Image.fromarray(scene(seed=7)).save(path)
        futures = [Client(url, verbose=False).submit(handle_file(str(path)), "sky", "both", api_name="/segment")
                   for _ in range(8)]
        outcomes = []
        for f in futures:
            try:
                f.result(timeout=300)
                outcomes.append("ok")
            except Exception as exc:  # gradio_client reports a full queue as an error with a message
                outcomes.append(str(exc))
        assert "ok" in outcomes
        rejected = [o for o in outcomes if o != "ok"]
        assert rejected and all("queue" in o.lower() or "full" in o.lower() for o in rejected), outcomes
        again = Client(url, verbose=False).predict(handle_file(str(path)), "sky", "one-pass", api_name="/segment")
        assert again[0]["annotations"]


def test_thirty_different_images_do_not_grow_memory_without_bound(segmenter):
    process = psutil.Process()
    for i in range(5):  # warm-up: caches fill to their bound
        segmenter.segment(scene(seed=200 + i), "sky, grass", method="both")
    gc.collect()
    before = process.memory_info().rss
    for i in range(30):
        segmenter.segment(scene(seed=300 + i), f"sky, grass, thing {i}", method="both")
    gc.collect()
    growth = process.memory_info().rss - before
    stages = segmenter.stages
    assert all(len(stage) <= stage.max_entries for stage in stages.values())
    assert stages["proposals"].max_entries == stages["crops"].max_entries == segmenter.config.cache_size
    assert stages["dense"].max_entries == 6 * segmenter.config.cache_size  # one per severance variant
    assert growth < 200 * 2**20, f"RSS grew by {growth / 2**20:.0f} MiB over 30 requests"


def _photo(path, seed: int, height: int = 768, width: int = 1024) -> str:
    Image.fromarray(scene(height, width, seed=seed)).save(path)
    return str(path)


def test_a_soak_of_sessions_with_photos_and_49_megapixel_images_keeps_memory_flat(tmp_path):
    """Each session's views are kept at the working size in one bounded store, never the full-resolution
    upload: 30 sessions with photos and 5 with 7000 x 7000 images (each a 147 MB array once decoded) leave
    the server's RSS within 300 MB of its level after the first request."""
    from gradio_client import Client, handle_file

    from conftest import SMALL_CONFIG, serve
    from deop.web.app import build_app

    config = replace(SMALL_CONFIG, options=replace(SMALL_CONFIG.options, max_side=1024))
    demo = build_app(config, calibrate=False)
    big = tmp_path / "big.png"
    Image.fromarray(np.tile(scene(100, 100, seed=1), (70, 70, 1))).save(big)  # 49 MP, a small file
    process = psutil.Process()
    with serve(demo) as url:
        Client(url, verbose=False).predict(handle_file(_photo(tmp_path / "first.png", 0)), "sky, grass", "both",
                                           api_name="/segment")
        gc.collect()
        before = process.memory_info().rss
        for i in range(30):
            photo = _photo(tmp_path / f"p{i}.png", 400 + i)
            Client(url, verbose=False).predict(handle_file(photo), "sky, grass", "both", api_name="/segment")
        for i in range(5):
            out = Client(url, verbose=False).predict(handle_file(str(big)), f"sky, grass, thing {i}", "one-pass",
                                                     api_name="/segment")
            assert out[0]["annotations"]
        gc.collect()
        growth = process.memory_info().rss - before
        sessions = demo.deop.sessions
    assert 0 < len(sessions) <= 36 and sessions.nbytes <= sessions.max_bytes  # the oldest evicted once full
    assert growth < 300 * 2**20, f"RSS grew by {growth / 2**20:.0f} MiB over 35 sessions"


def test_an_abandoned_request_frees_the_queue(tmp_path):
    """A client sends the heaviest settings (48 points per side on a 1280 px image, both methods, 300 masks:
    about 4.5 minutes here) and is killed: the request stops at its next batch, and the next user, with one
    request at a time, is answered about as fast as usual instead of waiting minutes."""
    import subprocess
    import sys
    import time

    from gradio_client import Client, handle_file

    from conftest import SMALL_CONFIG, serve
    from deop.web.app import build_app

    heavy = _photo(tmp_path / "heavy.png", 5, 960, 1280)
    small = _photo(tmp_path / "small.png", 6, 120, 160)
    with serve(build_app(SMALL_CONFIG, calibrate=False)) as url:  # no estimate: the request starts
        client = Client(url, verbose=False)
        client.predict(handle_file(small), "sky", "one-pass", api_name="/segment")  # models loaded
        start = time.monotonic()
        client.predict(handle_file(small), "sky, ball", "one-pass", api_name="/segment")
        usual = time.monotonic() - start
        code = (f"from gradio_client import Client, handle_file\nClient({url!r}, verbose=False).predict("
                f"handle_file({heavy!r}), 'sky, grass', 'both', points_per_side=48, max_side=2048, max_masks=300, "
                "box_nms_thresh=1.0, api_name='/segment')")
        abandoned = subprocess.Popen([sys.executable, "-c", code])
        try:
            time.sleep(8)  # uploaded and running
            assert abandoned.poll() is None
        finally:
            abandoned.kill()
            abandoned.wait(30)
        start = time.monotonic()
        out = client.predict(handle_file(small), "sky, grass", "one-pass", api_name="/segment")
        waited = time.monotonic() - start
    assert out[0]["annotations"]
    assert waited < usual + 20, f"the next request waited {waited:.1f} s (usually {usual:.1f} s)"
