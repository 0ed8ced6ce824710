"""Hugging Face Spaces conventions: ZeroGPU's decorator on the /segment handler, sized to the request."""

from __future__ import annotations

import inspect
import pickle
import sys
import types

import pytest

from conftest import SMALL_CONFIG


def test_outside_zerogpu_the_spaces_decorator_changes_nothing():
    pytest.importorskip("spaces")
    from deop.web.gpu import on_gpu

    def handler(image, vocabulary):
        yield image

    wrapped = on_gpu(handler, lambda *args: 30)
    assert wrapped is handler and inspect.isgeneratorfunction(wrapped)


def _crossing(value):
    """What a ZeroGPU worker gets or gives back: a pickled copy (the worker is another process)."""
    return pickle.loads(pickle.dumps(value))


@pytest.fixture()
def zerogpu(monkeypatch):
    """A stand-in ``spaces`` that behaves as ZeroGPU does where it matters here: the decorated function's
    arguments and results cross a process boundary (pickled copies), and its duration is recorded."""
    decorated = {}

    def gpu(duration):
        def decorate(fn):
            decorated[fn.__name__] = duration
            if inspect.isgeneratorfunction(fn):
                def on_gpu(*args, **kwargs):
                    for item in fn(*_crossing(args), **_crossing(kwargs)):
                        yield _crossing(item)
            else:
                def on_gpu(*args, **kwargs):
                    return _crossing(fn(*_crossing(args), **_crossing(kwargs)))
            on_gpu.zerogpu_duration = duration
            return on_gpu
        return decorate

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    monkeypatch.setenv("SPACES_ZERO_GPU", "1")
    return decorated


def test_on_zerogpu_only_the_model_work_is_decorated_sized_to_its_inputs(zerogpu, segmenter):
    """Handlers keep the sessions in the server process; what runs in a ZeroGPU worker is the model work,
    and the duration it asks for grows with the work the request asks for."""
    from deop.config import PROPOSAL_PRESETS
    from deop.web.app import build_app

    demo = build_app(SMALL_CONFIG, calibrate=False)
    assert set(zerogpu) == {"stream_on_gpu", "add_on_gpu", "compare_on_gpu", "relabel_on_gpu"}
    assert not any(hasattr(f.fn, "zerogpu_duration") for f in demo.fns.values())  # no handler in a worker
    for f in demo.fns.values():
        if getattr(f.fn, "__name__", "") == "load_example_output":  # one at a time with the other model events
            assert f.concurrency_id == "pipeline"
    assert sum(getattr(f.fn, "__name__", "") == "load_example_output" for f in demo.fns.values()) == 1
    seconds = zerogpu["stream_on_gpu"]
    light = seconds("tiny", None, None, "one-pass", SMALL_CONFIG.options)
    heavy_opts = SMALL_CONFIG.options.with_overrides(proposals=PROPOSAL_PRESETS["quality"])
    heavy = seconds("tiny", None, None, "both", heavy_opts)
    assert 15 <= light < heavy <= 120


@pytest.mark.slow
def test_on_zerogpu_sessions_survive_the_worker_boundary(zerogpu, segmenter, tmp_path):
    """/segment, a click that adds a segment, the comparison and a cached re-run, each computed behind
    the stand-in's pickled boundary: the session the first made is the one the others use."""
    from gradio_client import Client, handle_file
    from PIL import Image

    from conftest import scene, serve
    from deop.web.app import build_app

    path = tmp_path / "scene.png"
    Image.fromarray(scene(seed=16)).save(path)
    with serve(build_app(SMALL_CONFIG, calibrate=False)) as url:
        client = Client(url, verbose=False)
        first = client.predict(handle_file(str(path)), "sky, grass, ball", "both", api_name="/segment")
        assert first[0]["annotations"]
        _, added, _ = client.predict(20, 20, "add a segment", api_name="/add_segment")
        assert "Added segment 1" in added
        gallery, _ = client.predict(api_name="/compare_variants")
        assert len(gallery) == 6
        again = client.predict(handle_file(str(path)), "sky, grass, ball, water", "both", api_name="/rerun")
        assert again[7].startswith("Cached re-run") and any(a["label"].startswith("+1 ")
                                                           for a in again[0]["annotations"])
