"""Weights cast to the autocast format once (``deop.casts``): the same bits as autocast's own casts,
made again when a weight changes, never kept at float32 or for a weight that requires grad."""

from __future__ import annotations

import copy
import sys

import numpy as np
import torch
from torch import nn

from deop import casts
from deop.casts import CastOnceLinear, CastOnceOutProj, autocast_weight, cast_once, drop_casts
from deop.classify import dense_features
from deop.clip import attention, dense


def _uncached(monkeypatch) -> None:
    """Every weight cast by autocast on every call, as before the kept casts: in every deop module that
    reads ``autocast_weight`` (the swapped linear layers, CLIP's blocked attention, the severed block)."""
    def raw(module, name):
        return getattr(module, name)

    readers = [m for name, m in list(sys.modules.items())
               if name.startswith("deop") and getattr(m, "autocast_weight", None) is casts.autocast_weight]
    assert {casts, attention, dense} <= set(readers)
    for module in readers:
        monkeypatch.setattr(module, "autocast_weight", raw)


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
    swapped = [m for m in visual.modules() if isinstance(m, (CastOnceLinear, CastOnceOutProj))]
    assert all(("weight", torch.bfloat16) in m.__dict__["_autocast_weights"] for m in swapped)  # one cast each
    casts = {id(m): m.__dict__["_autocast_weights"][("weight", torch.bfloat16)][2] for m in swapped}
    again = _image_tower_calls(clip)
    assert all(m.__dict__["_autocast_weights"][("weight", torch.bfloat16)][2] is casts[id(m)] for m in swapped)
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
    assert any("_autocast_weights" in m.__dict__ for m in proposer.model.modules())  # casts were kept
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
        layer.weight.data = torch.randn(8, 16)  # new values under the same parameter, version unchanged
        assert torch.equal(autocast_weight(layer, "weight"), layer.weight.bfloat16())
        assert torch.equal(layer(x), nn.functional.linear(x, layer.weight, layer.bias))


def test_float32_grad_and_inference_weights_are_the_parameter_itself():
    frozen = nn.Linear(16, 8).requires_grad_(False)
    cast_once(nn.Sequential(frozen))
    assert autocast_weight(frozen, "weight") is frozen.weight  # no autocast: float32, stock's computation
    layer = nn.Linear(16, 8)
    cast_once(nn.Sequential(layer))
    x = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast_weight(layer, "weight") is layer.weight  # requires grad: autocast's cast, in the graph
        layer(x).float().sum().backward()
    assert layer.weight.grad is not None and "_autocast_weights" not in layer.__dict__
    with torch.inference_mode():  # made in inference mode: torch counts no version for it
        built = nn.Linear(16, 8).requires_grad_(False)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert built.weight.is_inference() and autocast_weight(built, "weight") is built.weight
    assert "_autocast_weights" not in frozen.__dict__ and "_autocast_weights" not in built.__dict__


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


def test_one_cast_per_format_kept_side_by_side_and_dropped():
    layer = nn.Linear(16, 8).requires_grad_(False)
    casts_by_format = {}
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", dtype=dtype):
            casts_by_format[dtype] = autocast_weight(layer, "weight")
            assert casts_by_format[dtype].dtype == dtype
    for dtype, cast in casts_by_format.items():  # neither replaced the other
        with torch.autocast("cpu", dtype=dtype):
            assert autocast_weight(layer, "weight") is cast
    drop_casts(nn.Sequential(layer))
    assert "_autocast_weights" not in layer.__dict__


def test_auto_frees_the_casts_it_made_when_float32_wins(segmenter, monkeypatch):
    """``auto`` measures bfloat16 with the shared models (which keeps casts); keeping float32, it frees them."""
    from deop import precision

    monkeypatch.setattr(precision, "choose", lambda device, measure, candidates=None: (
        measure("float32"), measure("bfloat16"), precision.Choice("float32", ("bfloat16",)))[-1])
    clip, proposer = segmenter.clip, segmenter.proposer
    assert precision.calibrate(clip, proposer, "cpu").precision == "float32"
    for model in (clip.model, proposer.model):
        assert not any("_autocast_weights" in m.__dict__ for m in model.modules())
