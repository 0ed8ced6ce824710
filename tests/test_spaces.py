"""Hugging Face Spaces conventions: ZeroGPU's decorator on the /segment handler, sized to the request."""

from __future__ import annotations

import inspect
import sys
import types

import pytest

from conftest import SMALL_CONFIG


def test_outside_zerogpu_the_spaces_decorator_changes_nothing():
    pytest.importorskip("spaces")
    from app import on_gpu

    def handler(image, vocabulary):
        yield image

    wrapped = on_gpu(handler, lambda *args: 30)
    assert wrapped is handler and inspect.isgeneratorfunction(wrapped)


def test_on_zerogpu_the_segment_handler_asks_for_a_gpu_sized_to_its_inputs(monkeypatch, segmenter):
    """The decorator's wiring with a stand-in ``spaces`` module (ZeroGPU itself exists only on a Space):
    /segment runs through it, and the duration it asks for grows with the work the inputs ask for."""
    asked = {}

    def gpu(duration):
        def decorate(fn):
            def on_gpu(*args, **kwargs):
                yield from fn(*args, **kwargs)

            on_gpu.zerogpu_duration = duration
            asked[fn.__name__] = fn
            return on_gpu
        return decorate

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    from app import build_app

    demo = build_app(SMALL_CONFIG, calibrate=False)
    segment = next(f for f in demo.fns.values() if f.api_name == "segment")
    duration = segment.fn.zerogpu_duration
    names = list(inspect.signature(asked["segment"]).parameters)[:-1]
    assert names[:3] == ["image", "vocabulary", "method"]

    def seconds(**values):
        defaults = {"image": "x.png", "vocabulary": "cat", "method": "one-pass", "points_per_side": 10}
        return duration(*[{**defaults, **values}.get(n) for n in names])

    light, heavy = seconds(), seconds(points_per_side=48, method="both")
    assert 15 <= light < heavy <= 120


def test_on_zerogpu_every_handler_that_runs_a_model_asks_for_the_gpu(monkeypatch, segmenter):
    """On ZeroGPU, CUDA exists only inside a @spaces.GPU call: the cached re-runs, the clicks that add a
    segment, the variants' comparison and the examples' lazy caching run models too."""
    wrapped = []

    def gpu(duration):
        def decorate(fn):
            wrapped.append(getattr(fn, "__name__", ""))
            fn.zerogpu_duration = duration
            return fn
        return decorate

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    from app import build_app

    demo = build_app(SMALL_CONFIG, calibrate=False)
    assert {"segment", "rerun", "click_pixel", "add_segment_api", "compare", "example"} <= set(wrapped)
    for f in demo.fns.values():
        if f.api_name in ("segment", "rerun", "add_segment", "compare_variants"):
            assert hasattr(f.fn, "zerogpu_duration"), f.api_name
        if getattr(f.fn, "__name__", "") == "load_example_output":  # one at a time with the other model events
            assert f.concurrency_id == "pipeline"
