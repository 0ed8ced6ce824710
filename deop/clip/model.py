"""An open_clip model with what the pipeline needs beside it (device, input size, normalisation)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..casts import cast_once
from ..errors import OptionError
from ..weights import clip_weights_error, seeded_init
from .attention import fast_cpu_attention


@dataclass
class ClipModel:
    model: nn.Module
    tokenizer: Any
    name: str
    pretrained: str | None
    device: torch.device
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    precision: str = "float32"  # what it runs at (``deop.precision``); the weights stay as built

    def autocast(self) -> Any:
        """The context its forward passes run in (nothing at float32)."""
        from ..precision import autocast

        return autocast(self.device, self.precision)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.visual.conv1.weight.dtype

    @property
    def key(self) -> str:
        return f"{self.name}/{self.pretrained or 'random'}/{self.device}/{self.dtype}/{self.precision}"


def build_clip(name: str, pretrained: str | None, device: torch.device) -> ClipModel:
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    if name not in open_clip.list_models():
        raise OptionError(f"unknown CLIP model {name!r}; open_clip.list_models() lists the known ones")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with seeded_init():
                model = open_clip.create_model(name, pretrained=pretrained, device=device)
        except Exception as exc:  # any failure to fetch or read weights gets the one clear message
            if pretrained is None:
                raise
            raise clip_weights_error(name, pretrained, exc) from exc
    model.eval().requires_grad_(False)
    fast_cpu_attention(model)
    cast_once(model.visual)  # the image tower runs per image and per batch of crops; the text tower rarely
    visual = model.visual
    size = visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN)
    std = tuple(getattr(visual, "image_std", None) or OPENAI_DATASET_STD)
    return ClipModel(model, open_clip.get_tokenizer(name), name, pretrained, device, size, mean, std)
