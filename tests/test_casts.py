"""Weights cast to the autocast format once (``deop.casts``): the same bits as autocast's own casts,
made again when a weight changes, never kept at float32 or for a weight that requires grad."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from deop import casts
from deop.casts import CastOnceLinear, CastOnceOutProj, autocast_weight, cast_once
from deop.classify import dense_features
from deop.clip import attention


def _uncached(monkeypatch) -> None:
    """Every weight cast by autocast on every call, as before the kept casts."""
    def raw(module, name):
        return getattr(module, name)

    monkeypatch.setattr(casts, "autocast_weight", raw)
    monkeypatch.setattr(attention, "autocast_weight", raw)


def _image_tower_calls(clip):
    crops = torch.rand(2, 3, clip.image_size, clip.image_size, generator=torch.Generator().manual_seed(1))
    image = (torch.rand(64, 80, 3, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8).numpy()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        return clip.model.encode_image(crops), dense_features(clip, image, 64)


def test_kept_casts_give_autocasts_bits(segmenter, monkeypatch):
    """The image tower's crops and dense pass under CPU bfloat16 are bit-equal with and without kept casts
    (a cast of another rounding or a stale one differs), and each weight is cast once."""
    from dataclasses import replace

    clip = replace(segmenter.clip, precision="bfloat16")
    visual = clip.model.visual
    assert sum(isinstance(m, (CastOnceLinear, CastOnceOutProj)) for m in visual.modules()) > 0
    assert not any(type(m) is nn.Linear for m in visual.modules())
    kept = _image_tower_calls(clip)
    tables = {id(m): dict(m.__dict__["_autocast_weights"]) for m in visual.modules()
              if "_autocast_weights" in m.__dict__}
    again = _image_tower_calls(clip)
    for m in visual.modules():  # the second call reused every cast
        if id(m) in tables:
            assert all(m.__dict__["_autocast_weights"][k][1] is v[1] for k, v in tables[id(m)].items())
    with monkeypatch.context() as patch:
        _uncached(patch)
        reference = _image_tower_calls(clip)
    for ours, again_, stock in zip(kept, again, reference):
        assert torch.equal(ours, stock) and torch.equal(again_, stock)


def test_proposal_model_gives_autocasts_masks_with_kept_casts(segmenter, monkeypatch):
    """The proposal model's linear layers keep their casts too (``ModelCache.proposer``): its masks and
    scores under CPU bfloat16 are the same with and without them."""
    from dataclasses import replace

    from conftest import scene

    proposer = replace(segmenter.proposer, precision="bfloat16")
    assert not any(type(m) is nn.Linear for m in proposer.model.modules())
    config = replace(segmenter.config.options.proposals, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                     box_nms_thresh=1.0)
    image = scene(seed=4)
    ours = proposer.propose(image, config)
    with monkeypatch.context() as patch:
        _uncached(patch)
        stock = proposer.propose(image, config)
    assert ours.raw_count == stock.raw_count > 1
    assert np.array_equal(ours.segment_map, stock.segment_map) and np.array_equal(ours.scores, stock.scores)


def test_a_changed_weight_is_cast_again():
    layer = nn.Linear(16, 8).requires_grad_(False)
    cast_once(nn.Sequential(layer))
    x = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = autocast_weight(layer, "weight")
        assert first.dtype == torch.bfloat16 and autocast_weight(layer, "weight") is first
        with torch.no_grad():
            layer.weight.mul_(2)  # in place, as load_state_dict writes
        second = autocast_weight(layer, "weight")
        assert torch.equal(second, layer.weight.bfloat16()) and not torch.equal(second, first)
        layer.weight = nn.Parameter(torch.randn(8, 16), requires_grad=False)  # a new tensor
        assert torch.equal(autocast_weight(layer, "weight"), layer.weight.bfloat16())
        assert torch.equal(layer(x), nn.functional.linear(x, layer.weight, layer.bias))


def test_float32_and_grad_weights_are_the_parameter_itself():
    layer = nn.Linear(16, 8)
    cast_once(nn.Sequential(layer))
    assert autocast_weight(layer, "weight") is layer.weight  # no autocast: float32, stock's computation
    x = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast_weight(layer, "weight") is layer.weight  # requires grad: autocast's cast, in the graph
        layer(x).float().sum().backward()
    assert layer.weight.grad is not None and "_autocast_weights" not in layer.__dict__


def test_a_cast_made_in_inference_mode_serves_a_graph_later():
    """A kept cast made under inference mode is a normal tensor: a later forward that records a graph
    (an input that requires grad) can save it for backward."""
    layer = nn.Linear(16, 8).requires_grad_(False)
    cast_once(nn.Sequential(layer))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        layer(torch.randn(2, 16))
    x = torch.randn(2, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x).float().sum().backward()
    assert x.grad is not None


def test_the_swap_keeps_names_weights_and_classes_of_their_kind():
    mha = nn.MultiheadAttention(16, 2, batch_first=True)
    model = nn.Sequential(nn.Linear(16, 16), mha)
    stock = copy.deepcopy(model)
    assert cast_once(model) is model
    assert isinstance(model[0], CastOnceLinear) and isinstance(mha.out_proj, CastOnceOutProj)
    assert isinstance(mha.out_proj, nn.modules.linear.NonDynamicallyQuantizableLinear)
    assert model.state_dict().keys() == stock.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), stock.state_dict().values()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_one_cast_per_format(dtype):
    layer = nn.Linear(16, 8).requires_grad_(False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = autocast_weight(layer, "weight")
    with torch.autocast("cpu", dtype=dtype):
        assert autocast_weight(layer, "weight").dtype == dtype
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast_weight(layer, "weight") is low
