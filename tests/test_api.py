"""The research endpoints as an API client uses them (the README's gradio_client example): /add_segment,
/compare_variants and /rerun in one client session after /segment."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import scene
from deop.clip.severance import COMPARED_VARIANTS

pytestmark = pytest.mark.slow
STATUS = 7  # /segment's outputs for a client: the views of deop.ui.SEGMENT_OUTPUTS, then the status line


@pytest.fixture()
def session(sparse_app, tmp_path):
    """A client that has segmented a photo, its app, and a pixel that no segment covers."""
    from gradio_client import Client, handle_file

    demo, url = sparse_app
    path = tmp_path / "scene.png"
    Image.fromarray(scene(seed=16)).save(path)
    client = Client(url, verbose=False)
    client.predict(handle_file(str(path)), "sky, grass, ball", "both", api_name="/segment")
    view = max(demo.deop.sessions._items.values(), key=lambda item: item[2])[0]
    ys, xs = np.nonzero(view.result.work_segment_map < 0)
    assert len(xs), "the test needs an uncovered pixel"
    return client, str(path), (int(xs[len(xs) // 2]), int(ys[len(ys) // 2]))


def _labels(overlay) -> list[str]:
    return [a["label"] for a in overlay["annotations"]]


def test_add_compare_and_rerun_through_the_api(session):
    from gradio_client import handle_file

    client, path, (x, y) = session
    _, added, overlay = client.predict(x, y, "add a segment", api_name="/add_segment")
    assert "Added segment 1" in added and any(label.startswith("+1 ") for label in _labels(overlay))
    gallery, table = client.predict(api_name="/compare_variants")
    assert len(gallery) == len(COMPARED_VARIANTS) and "same as DeOP: segments" in table
    out = client.predict(handle_file(path), "tree, water, road", "both", api_name="/rerun")
    assert out[STATUS].startswith("Cached re-run (vocabulary changed)")
    added = [label for label in _labels(out[0]) if label.startswith("+1 ")]
    assert added and added[0][3:] in {"tree", "water", "road"}  # the added segment is kept, relabelled


def test_a_rerun_that_needs_new_proposals_says_so(session):
    from gradio_client import handle_file

    client, path, _ = session
    out = client.predict(handle_file(path), "sky, grass, ball, water", "both", points_per_side=6, api_name="/rerun")
    assert out[STATUS].startswith("Not re-run: points per side changed") and "/segment" in out[STATUS]


def test_bad_clicks_are_named_and_added_segments_are_capped(session, sparse_app, monkeypatch):
    client, _, (x, y) = session
    for bad, name in (("abc", "x"), (None, "x"), (10**400, "x")):
        with pytest.raises(Exception, match=f"{name} must be a pixel position"):
            client.predict(bad, y, "add a segment", api_name="/add_segment")
    with pytest.raises(Exception, match="lies outside"):
        client.predict(10_000, y, "add a segment", api_name="/add_segment")
    monkeypatch.setattr(sparse_app[0].deop, "max_added", 1)  # the server's limit
    _, first, _ = client.predict(x, y, "add a segment", api_name="/add_segment")
    _, second, _ = client.predict(x, y, "add a segment", api_name="/add_segment")
    assert "Added segment 1" in first and second.startswith("At most 1 added segments per image")
