"""An open_clip model with what the pipeline needs beside it (device, input size, normalisation)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import OptionError
from ..weights import clip_weights_error, seeded_init


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
    contiguous_attention_inputs(model)
    visual = model.visual
    size = visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN)
    std = tuple(getattr(visual, "image_std", None) or OPENAI_DATASET_STD)
    return ClipModel(model, open_clip.get_tokenizer(name), name, pretrained, device, size, mean, std)


def _seq_first_contiguous(t: Any) -> Any:
    """The same values laid out so that ``t.transpose(0, 1)`` is contiguous."""
    return t.transpose(0, 1).contiguous().transpose(0, 1) if torch.is_tensor(t) and t.dim() == 3 else t


def _contiguous_under_cpu_autocast(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    first = args[0] if args else kwargs.get("query")
    if not (torch.is_tensor(first) and first.device.type == "cpu" and torch.is_autocast_enabled("cpu")):
        return None  # float32 (or another device): stock's computation, untouched
    return tuple(_seq_first_contiguous(a) for a in args), {k: _seq_first_contiguous(v) for k, v in kwargs.items()}


def contiguous_attention_inputs(model: nn.Module) -> int:
    """Makes bfloat16 batches as cheap per image as one image, on the CPU; returns the modules hooked.

    A batch-first ``nn.MultiheadAttention`` transposes its input to a non-contiguous [L, N, E] view before
    its input projection. Under CPU autocast to bfloat16, torch 2.14's linear on that view expands the
    weight once per sequence position and runs a batched product (a 197 x 768 x 2304 copy per block): 22
    crops of ViT-B/16 took 6.3 s where one crop took 0.07 s (float32: 5.3 s), so the crop baseline looked
    four times slower than it is. Handing the module the same values laid out so that its transpose is
    contiguous took the 22 crops to 1.6 s. Only while CPU autocast is on: float32 stays stock's computation.
    """
    modules = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention) and m.batch_first]
    for m in modules:
        m.register_forward_pre_hook(_contiguous_under_cpu_autocast, with_kwargs=True)
    return len(modules)
