"""Linear layers whose weights are cast to the autocast format once, not on every forward pass.

``torch.autocast`` casts a float32 weight to bfloat16 each time a matrix product uses it, and keeps the
cast only for weights that require grad, only until the context exits. CLIP's image tower is 85M weights
(170 MB in bfloat16), re-cast by every dense pass and every batch of crops; SAM vit_b's encoder as many,
and its mask decoder's once per batch of point prompts. On this project's CPU CLIP's 48 linear layers took
150 ms with autocast's casts and 144 ms with kept ones at 589 tokens (the dense pass at 448 px), 50.6
against 43.5 ms at 197 tokens (one crop), 340 against 328 ms at 8 crops (medians of 22 alternating
rounds); the whole dense pass gained 2 % at 448 px and 5 % at 672 px, and SAM vit_b's proposals at the
fast preset (100 prompts, 300 masks) 4 % (1.565 against 1.496 s), measured alternating. A fixed cost per
call weighs more on the one pass than on the crops, so the casts also blurred the comparison of the two
methods. A kept cast costs that memory once (made at the first call in a format, never at float32; freed
when ``auto`` measures a lower precision and keeps float32) and has the bits autocast's cast would have,
so results do not change. Every linear layer keeps its cast; ``nn.MultiheadAttention``'s own forward
(CLIP's attention off the CPU bfloat16 path, ``deop.clip.attention``) hands its projection weights to
torch, which autocast casts per call as before.

A kept cast is made again when its weight changes (a new tensor, or an in-place update such as
``load_state_dict``), and never for a weight that requires grad (autocast's own cast is then part of the
graph). Float32, and any call outside autocast, use the weight itself: stock's computation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

__all__ = ["CastOnceLinear", "CastOnceOutProj", "autocast_weight", "cast_once", "drop_casts"]

_KEPT = "_autocast_weights"  # on each module: {(parameter name, dtype): (source, version, cast)}


def autocast_weight(module: nn.Module, name: str) -> torch.Tensor:
    """`module`'s parameter `name` in the autocast format of its device, cast once and kept on the module
    (the parameter itself outside autocast, for a non-float32 parameter, for one that requires grad, and
    for an inference tensor, whose changes torch does not count)."""
    weight = getattr(module, name)
    kind = weight.device.type
    if (weight.dtype != torch.float32 or weight.requires_grad or weight.is_inference()
            or not torch.is_autocast_enabled(kind)):
        return weight
    key = (name, torch.get_autocast_dtype(kind))
    kept = module.__dict__.setdefault(_KEPT, {}).get(key)
    # The same storage (the kept source holds it, so its address cannot pass to another tensor) at the same
    # version (in-place writes, load_state_dict's included, count): else a new tensor or changed values.
    if kept is None or kept[0].data_ptr() != weight.data_ptr() or kept[0].device != weight.device \
            or kept[1] != weight._version:
        with torch.inference_mode(False):  # a normal tensor: usable outside inference mode too
            kept = (weight.detach(), weight._version, weight.detach().to(key[1]))
        module.__dict__[_KEPT][key] = kept
    return kept[2]


def drop_casts(model: nn.Module) -> None:
    """Frees every kept cast of `model` (``auto`` measured the lower precision and chose float32)."""
    for m in model.modules():
        m.__dict__.pop(_KEPT, None)


class _CastOnce:
    """The forward of ``nn.Linear`` with the kept cast of its weight: what both swapped classes share."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, autocast_weight(self, "weight"), self.bias)


class CastOnceLinear(_CastOnce, nn.Linear):
    """``nn.Linear`` whose weight under autocast is cast once (``autocast_weight``)."""


class CastOnceOutProj(_CastOnce, NonDynamicallyQuantizableLinear):
    """The same for ``nn.MultiheadAttention``'s output projection, which keeps its own class."""


_SWAPS = {nn.Linear: CastOnceLinear, NonDynamicallyQuantizableLinear: CastOnceOutProj}


def cast_once(model: nn.Module) -> nn.Module:
    """`model`, the class of every ``nn.Linear`` in it swapped to its cast-once twin (names, weights and
    state dict unchanged). Attention modules read ``autocast_weight`` for their packed input projection
    themselves (``deop.clip.attention``)."""
    for m in model.modules():
        if type(m) in _SWAPS:
            m.__class__ = _SWAPS[type(m)]
    return model
