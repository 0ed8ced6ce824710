"""For the automatic mask generator's tests (test_amg.py, test_small_regions.py): random-weight models
(seeded), synthetic images and the record comparison. Fixtures here are imported by those modules.

MobileSAM's and SAM 2.1's image encoders take seconds per image on two CPU cores, and every comparison
encodes the same few crops twice (stock, then ours) in several regimes; ``memoise`` caches an encoder's
output by the exact bytes of its input and hands out copies, so each crop is encoded once per session.
The encoders are deterministic, so the cached tensors are bit for bit what a fresh call returns, and an
input that differs in any byte is encoded afresh: what the generators do with the embedding is untouched.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import math
import os
import warnings

import numpy as np
import pytest
import torch
from torch import nn


def scene(height: int, width: int, seed: int) -> np.ndarray:
    """The tests' scene with a thin bar and more noise: random models need some structure."""
    from conftest import scene as base

    return base(height, width, seed, noise=25, bar=True)


@pytest.fixture(scope="session")
def image_a() -> np.ndarray:
    return scene(120, 160, 0)


@pytest.fixture(scope="session")
def image_b() -> np.ndarray:
    return scene(200, 150, 1)


def _clone(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    return value


def memoise(owner: object, name: str) -> None:
    """Replace ``owner.name`` (an encoder's forward) by a cache keyed on its input's exact bytes."""
    forward = getattr(owner, name)
    cache: dict[tuple, object] = {}

    def cached(x: torch.Tensor):
        key = (tuple(x.shape), str(x.dtype), hashlib.sha256(x.detach().cpu().numpy().tobytes()).hexdigest())
        if key not in cache:
            cache[key] = forward(x)
        return _clone(cache[key])

    setattr(owner, name, cached)


def sam_at_resolution(sam: nn.Module, size: int) -> nn.Module:
    """The same SAM v1 at a ``size`` px input, as the project runs it."""
    from deop.proposers.sam import SAM

    return SAM.at_input_size(sam, size)


@pytest.fixture(scope="session")
def amg_sam() -> nn.Module:
    """segment_anything's architecture at toy size; it still runs a 1024 px input and a full-size decoder."""
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(0)
    return _build_sam(64, 2, 2, [1], checkpoint=None).eval()


@pytest.fixture(scope="session")
def amg_sam_256(amg_sam) -> nn.Module:
    """The same weights at a 256 px input, as the project runs SAM at 512: the decoder 16x cheaper."""
    return sam_at_resolution(amg_sam, 256)


@pytest.fixture(scope="session")
def amg_mobile_sam() -> nn.Module:
    import mobile_sam

    torch.manual_seed(0)
    model = mobile_sam.sam_model_registry["vit_t"]().eval()
    memoise(model.image_encoder, "forward")
    return model


def require_sam2() -> None:
    """Skip where the optional sam2 package is absent (a Space built from requirements.txt), as test_sam2.py
    does; with DEOP_REQUIRE_SAM2 set (CI, after make install) its absence is an error instead."""
    if importlib.util.find_spec("sam2") is None:
        if os.environ.get("DEOP_REQUIRE_SAM2"):
            raise RuntimeError("DEOP_REQUIRE_SAM2 is set but the sam2 package is missing (make install adds it)")
        pytest.skip("the optional sam2 package is not installed (see requirements-sam2.txt)")


@pytest.fixture(scope="session")
def amg_sam2() -> nn.Module:
    require_sam2()
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu")
    memoise(model, "forward_image")
    return model


def assert_same_records(stock: list[dict], ours: list[dict]) -> None:
    """Field by field: equal masks, and equal values of the same Python types everywhere else."""
    assert len(ours) == len(stock)
    for i, (s, o) in enumerate(zip(stock, ours)):
        assert o.keys() == s.keys(), i
        assert isinstance(o["segmentation"], np.ndarray) and o["segmentation"].dtype == bool
        assert o["segmentation"].shape == s["segmentation"].shape, i
        assert np.array_equal(o["segmentation"], s["segmentation"]), f"mask {i} differs"
        for key in ("area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"):
            assert _typed(o[key]) == _typed(s[key]), f"{key} of mask {i}: {o[key]!r} != {s[key]!r}"


def _typed(value):
    """A value with the type of each leaf, so that 3 and 3.0 compare unequal; NaN equals NaN."""
    if isinstance(value, list):
        return [_typed(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return ("nan", float)
    return (value, type(value))


def with_small_masks(model: nn.Module, quantile: float = 0.97) -> nn.Module:
    """The model (shallow copy, shared weights and encoder cache) with each mask's low-res logits shifted
    down to their ``quantile``: a random model's masks fill the image, so every mask of a sub-crop touches
    the crop's edge and is dropped; with this one they are small blobs, many kept from every crop."""
    name = "sam_mask_decoder" if hasattr(model, "sam_mask_decoder") else "mask_decoder"
    decoder = copy.copy(getattr(model, name))
    forward = decoder.forward

    def shifted(*args, **kwargs):
        low_res, *rest = forward(*args, **kwargs)
        return (low_res - torch.quantile(low_res.flatten(2), quantile, dim=-1)[..., None, None], *rest)

    decoder.forward = shifted
    out = copy.copy(model)
    out._modules = {**model._modules, name: decoder}
    return out
