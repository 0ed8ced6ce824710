"""The app as a public Space meets it: every input of /segment given the wrong type, a value out of range,
a file that was never uploaded, a garbage data: URL, too few inputs, a file too large, through
gradio_client and through the raw HTTP API. Each gets a message naming the input, never a generic
"Error" or ``{"error": null}``, and the server answers the next request correctly."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import httpx
import pytest
from PIL import Image

from conftest import scene

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "photo.png"
    Image.fromarray(scene(seed=70)).save(path)
    return str(path)


def still_serves(client, photo) -> None:
    from gradio_client import handle_file

    out = client.predict(handle_file(photo), "sky, grass", "one-pass", api_name="/segment")
    assert out[0]["annotations"]


# (keyword arguments of /segment that replace the defaults, what the error must say)
CLIENT_CASES = [
    ({"points_per_side": "abc"}, "points_per_side must be a whole number, got 'abc'"),
    ({"points_per_side": None}, "points_per_side must be a whole number, got None"),
    ({"points_per_side": [4, 5]}, "points_per_side must be a whole number, got [4, 5]"),
    ({"points_per_side": 10.7}, "points_per_side must be a whole number, got 10.7"),
    ({"points_per_side": 99}, "points_per_side must be between 4 and 48, got 99"),
    ({"max_side": 100000}, "max_side must be between 128 and 2048, got 100000"),
    ({"pred_iou_thresh": "high"}, "pred_iou_thresh must be a number, got 'high'"),
    ({"none_threshold": -0.5}, "none_threshold must be between 0 and 1, got -0.5"),
    ({"fill_uncovered": "no"}, "fill_uncovered must be true or false, got 'no'"),
    ({"fill_uncovered": 1}, "fill_uncovered must be true or false, got 1"),
    ({"severance": "nope"}, "severance must be one of deop, maskclip"),
    ({"templates": 3}, "templates must be a text, got 3"),
    ({"method": "fast"}, "method must be one of one-pass, crop, both, dense; got 'fast'"),
    ({"proposal_model": "vit_h"}, "proposal_model must be one of tiny"),
    ({"vocabulary": None}, "vocabulary must be a text (the classes, e.g. 'cat, dog'), got None"),
    ({"vocabulary": ["cat", "dog"]}, "vocabulary must be a text (the classes, e.g. 'cat, dog'), got ['cat', 'dog']"),
    ({"vocabulary": " , "}, "Enter at least one class name"),
]


@pytest.mark.parametrize("overrides,message", CLIENT_CASES, ids=[f"{list(c)[0]}={c[list(c)[0]]!r}"
                                                                  for c, _ in CLIENT_CASES])
def test_client_cases_are_named_errors(client, photo, overrides, message):
    from gradio_client import handle_file

    args = {"vocabulary": "sky, grass", "method": "one-pass", **overrides}
    with pytest.raises(Exception) as info:
        client.predict(handle_file(photo), args.pop("vocabulary"), args.pop("method"), api_name="/segment", **args)
    text = str(info.value)
    assert message in text and "upstream" not in text and "Traceback" not in text
    still_serves(client, photo)


def upload(url: str, path: str) -> str:
    answer = httpx.post(url + "gradio_api/upload", files={"files": open(path, "rb")}, timeout=60)
    answer.raise_for_status()
    return answer.json()[0]


def raw_call(url: str, data: list) -> tuple[int, str]:
    """POST /gradio_api/call/segment, then read its event stream: (HTTP status, the answer's text)."""
    posted = httpx.post(url + "gradio_api/call/segment", json={"data": data}, timeout=60)
    if posted.status_code != 200:
        return posted.status_code, posted.text
    event = posted.json()["event_id"]
    with httpx.stream("GET", url + f"gradio_api/call/segment/{event}", timeout=120) as stream:
        return 200, "".join(stream.iter_text())


def _data_url(path: str) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def uploaded(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def test_raw_cases(app_url, client, photo):
    ours = upload(app_url, photo)
    cases = [  # (data, status, what the answer must say)
        ([uploaded(ours), "sky, grass", "one-pass"], 200, '"annotations"'),  # the README's three inputs
        ([{"path": ours}, "sky", "dense"], 200, '"annotations"'),  # an upload, sent without its metadata
        ([{"path": "/etc/passwd"}, "sky", "one-pass"], 400, "image: upload the file first"),
        ([{"path": str(ROOT / "app.py")}, "sky", "one-pass"], 400, "image: upload the file first"),
        ([{"path": str(ROOT / "assets" / ".." / "app.py")}, "sky", "one-pass"], 400, "image: upload the file first"),
        ([{"path": "photo.png"}, "sky", "one-pass"], 400, "image: upload the file first"),
        ([{"path": "x.png", "url": "data:image/png;base64,!!not base64!!"}, "sky", "one-pass"], 400,
         "image: the data: URL is not a base64-encoded image"),
        ([{"path": "x.png", "url": _data_url(photo)}, "sky", "one-pass"], 200, '"annotations"'),  # decoded by us
        ([{"path": "x.png", "url": "data:image/png;base64," + base64.b64encode(b"no image").decode()}, "sky",
          "one-pass"], 200, "not an image file"),  # the package's loader names it, as for an upload
        ([{"path": "x.png", "url": "data:image/png;base64," + "A" * (26 * 2**20 * 4 // 3)}, "sky", "one-pass"],
         400, "image: the data: URL is over the 25mb upload limit"),
        ([None, "sky", "one-pass"], 422, "Upload an image first"),
        ([uploaded(ours), None, "one-pass"], 422, "vocabulary must be a text"),
        ([uploaded(ours), "sky", "one-pass", "abc"], 422, "points_per_side must be a whole number, got 'abc'"),
        ([uploaded(ours), "sky", "one-pass", 8, 0.5, 0.5, 512, "deop", 0.0, "no"], 422,
         "fill_uncovered must be true or false, got 'no'"),
    ]
    for data, status, message in cases:
        got_status, text = raw_call(app_url, data)
        assert got_status == status and message in text, (data, got_status, text[:500])
        assert '"error": null' not in text and "null" != text.strip()
        still_serves(client, photo)


def test_an_example_image_may_be_sent_by_its_path(app_url):
    status, text = raw_call(app_url, [{"path": str(ROOT / "assets" / "shapes.png")}, "ball, box", "one-pass"])
    assert status == 200 and '"annotations"' in text


def test_uploads_over_the_size_limit_are_refused_with_the_limit(app_url, client, photo, tmp_path):
    from gradio_client import handle_file

    big = tmp_path / "huge.png"
    big.write_bytes(os.urandom(26 * 2**20))  # over the app's 25 MB
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict(handle_file(str(big)), "sky", "one-pass", api_name="/segment")
    answer = httpx.post(app_url + "gradio_api/upload", files={"files": open(big, "rb")}, timeout=60)
    assert answer.status_code == 413 and "maximum allowed size" in answer.text
    still_serves(client, photo)


def test_the_page_config_shows_no_path_of_the_server_but_its_own_temp_folder(app_url):
    config = httpx.get(app_url + "config", timeout=30).text
    assert str(ROOT) not in config and str(Path.home()) not in config
    paths = {f["path"] for f in _file_data(json.loads(config))}
    assert paths and all(p.startswith(os.environ["GRADIO_TEMP_DIR"]) or p.startswith("http") for p in paths)


def _file_data(node):
    if isinstance(node, dict):
        if "path" in node and node.get("meta", {}).get("_type") == "gradio.FileData":
            yield node
        for value in node.values():
            yield from _file_data(value)
    elif isinstance(node, list):
        for value in node:
            yield from _file_data(value)


def test_streamed_answers_come_one_pass_first_and_predict_gets_the_whole(client, photo):
    """A generator handler: gradio_client's submit() sees each stage's answer, predict() the complete one."""
    from gradio_client import handle_file

    job = client.submit(handle_file(photo), "sky, grass, ball", "both", api_name="/segment")
    final = job.result(timeout=300)
    steps = job.outputs()
    assert len(steps) >= 2
    first, last = steps[0], steps[-1]
    assert first[0]["annotations"] and "running…" in first[2] and not first[4]  # one pass done, crops pending
    assert last[1]["value"]["annotations"] and "running…" not in last[2] and last[4] is None  # files: when asked
    assert final[2] == last[2] and final[4] is None
    assert any(f.endswith("segmentation.json") for f in client.predict(api_name="/downloads"))
