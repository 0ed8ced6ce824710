"""Shared fixtures: random-weight models built once per session, on the CPU (or DEOP_TEST_DEVICE), small settings.

Random weights give meaningless labels but real shapes, timings and exact equalities; the tiny SAM
config keeps the automatic mask generator to well under a second per image on two cores.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from deop import ProposalConfig, Segmenter, SegmenterConfig, SegmentOptions
from deop.bench.app import free_port

torch.manual_seed(0)
# The apps the tests launch keep their files in one folder of this run, as app.py gives each app its own:
# Gradio reads its upload folder from the environment at request time, so it is set for the whole session.
_APP_DIR = tempfile.mkdtemp(prefix="deop-test-app-")
os.environ["DEOP_APP_DIR"] = _APP_DIR
os.environ["GRADIO_TEMP_DIR"] = os.path.join(_APP_DIR, "gradio")

# Thresholds at zero: a random SAM's quality scores are noise, and the tests need some masks.
SMALL_PROPOSALS = ProposalConfig(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                 min_mask_region_area=0, max_masks=50)
SMALL_OPTIONS = SegmentOptions(max_side=256, clip_size=224, proposals=SMALL_PROPOSALS)
# The shared models' device: the CPU (CI has no GPU); on a GPU machine DEOP_TEST_DEVICE=cuda runs every test
# that uses them with the models on the GPU.
DEVICE = os.environ.get("DEOP_TEST_DEVICE", "cpu")
# float32: the exact reference every equality with open_clip and the stock generators holds at (test_precision
# runs the others)
SMALL_CONFIG = SegmenterConfig(device=DEVICE, random_weights=True, sam_kind="tiny", precision="float32",
                               options=SMALL_OPTIONS)


@pytest.fixture(scope="session")
def segmenter() -> Segmenter:
    seg = Segmenter(SMALL_CONFIG)
    seg.load()
    return seg


@pytest.fixture(scope="session")
def clip(segmenter):
    return segmenter.clip


@pytest.fixture(scope="session")
def proposer(segmenter):
    """The tiny random SAM as the pipeline runs it (``deop.proposers.Proposer``)."""
    return segmenter.proposer


@pytest.fixture(scope="session")
def tiny_sam(proposer):
    """The same network as segment_anything built it, for its stock generator."""
    return proposer.model


def scene(height: int = 120, width: int = 160, seed: int = 0, noise: int = 8, bar: bool = False) -> np.ndarray:
    """A synthetic RGB scene: sky, grass, a red disc and a brown box (and a thin yellow bar), with noise."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), dtype=np.uint8)
    img[: height // 2] = (135, 190, 235)
    img[height // 2:] = (60, 150, 60)
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - height * 0.65) ** 2 + (xx - width * 0.3) ** 2 < (height * 0.15) ** 2
    img[disc] = (210, 30, 30)
    img[int(height * 0.3): int(height * 0.6), int(width * 0.6): int(width * 0.85)] = (120, 80, 40)
    if bar:
        img[int(height * 0.1): int(height * 0.15), int(width * 0.05): int(width * 0.9)] = (250, 250, 20)
    jitter = rng.integers(-noise, noise + 1, size=img.shape)
    return np.clip(img.astype(int) + jitter, 0, 255).astype(np.uint8)


@pytest.fixture
def scene_image() -> np.ndarray:
    return scene()


@pytest.fixture(scope="session")
def app_served(segmenter):
    """(the built app, its URL): the app's ``Server`` is ``demo.deop``, for tests that look at its sessions."""
    from deop.web.app import build_app

    demo = build_app(SMALL_CONFIG)
    with serve(demo) as url:
        yield demo, url


@pytest.fixture(scope="session")
def app_url(app_served):
    return app_served[1]


@pytest.fixture(scope="module")
def sparse_app():
    """An app whose segments cover little (two masks at most), so that uncovered pixels exist to click."""
    from dataclasses import replace

    from deop.web.app import build_app

    demo = build_app(replace(SMALL_CONFIG, options=SMALL_CONFIG.options.with_overrides(max_masks=2)),
                     calibrate=False)
    with serve(demo) as url:
        yield demo, url


@contextmanager
def serve(demo):
    """Launch a built app as ``python app.py`` does (same allowed paths) on a free port; close it after."""
    from deop.web.app import launch

    port = free_port()
    launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


# The automatic mask generator's own models and images (tests/amg_support.py, test_amg.py).
pytest_plugins = ["amg_support"]
