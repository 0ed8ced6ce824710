"""Many users at once: exact per-request results, a full queue answered with a message, bounded memory."""

from __future__ import annotations

import gc

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
    alone = [_labels(client.predict(handle_file(p), v, "one-pass", api_name="/segment")[4]) for p, v in jobs]
    clients = [Client(app_url, verbose=False) for _ in jobs]
    futures = [c.submit(handle_file(p), v, "one-pass", api_name="/segment") for c, (p, v) in zip(clients, jobs)]
    together = [_labels(f.result(timeout=300)[4]) for f in futures]
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)


def test_a_burst_past_the_queue_gets_busy_and_the_server_goes_on(segmenter, tmp_path):
    from gradio_client import Client, handle_file

    from app import build_app
    from conftest import SMALL_CONFIG, serve

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
    assert all(len(stage) <= segmenter.config.cache_size for stage in segmenter.stages.values())
    assert growth < 200 * 2**20, f"RSS grew by {growth / 2**20:.0f} MiB over 30 requests"
