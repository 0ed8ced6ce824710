"""Model builders and the one place where loaded models live.

Loading ViT-B/16 CLIP and SAM vit_b takes seconds and about a gigabyte; every Segmenter, CLI run and app
session shares them through ``MODELS``, keyed by (name, weights, device).
"""

from __future__ import annotations

import copy
import logging
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .lean_attention import lean_sam_attention
from .sam2_backend import (
    SAM2_MODELS,
    build_sam2_model,
    is_sam2,
    prompt_encoder_at,
    sam2_at_resolution,
    with_modules,
)
from .weights import WeightsError, clip_weights_error, ensure_sam_checkpoint, load_state_dict, seeded_init

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_WARNING = "RANDOM WEIGHTS: models are randomly initialised, labels are meaningless"


def _sam_builder(embed_dim: int, depth: int, heads: int, global_attn: list[int]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from segment_anything.build_sam import _build_sam

        return _build_sam(embed_dim, depth, heads, global_attn, checkpoint=None)

    return build


# Model names are data: the SAM registry's sizes, plus a tiny random-only config for tests and CI.
SAM_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "vit_b": _sam_builder(768, 12, 12, [2, 5, 8, 11]),
    "vit_l": _sam_builder(1024, 24, 16, [5, 11, 17, 23]),
    "vit_h": _sam_builder(1280, 32, 16, [7, 15, 23, 31]),
    "tiny": _sam_builder(64, 2, 2, [1]),
}
RANDOM_ONLY_SAM = {"tiny"}
# Every proposal model by name: SAM's sizes, then SAM 2.1's (deop.sam2_backend, needs the sam2 package).
SAM_KINDS: tuple[str, ...] = (*SAM_BUILDERS, *SAM2_MODELS)


def model_title(kind: str) -> str:
    """"SAM vit_b" or "SAM 2.1 hiera_t": how a proposal model is named to users."""
    return f"SAM 2.1 {kind.removeprefix('sam2.1_')}" if kind in SAM2_MODELS else f"SAM {kind}"


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" means CUDA when present, then Apple's MPS, else the CPU; an unavailable GPU is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu or auto")
    return device


@dataclass
class ClipModel:
    """An open_clip model with what the pipeline needs beside it."""

    model: nn.Module
    tokenizer: Any
    name: str
    pretrained: str | None
    device: torch.device
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def dtype(self) -> torch.dtype:
        return self.model.visual.conv1.weight.dtype

    @property
    def key(self) -> str:
        return f"{self.name}/{self.pretrained or 'random'}/{self.device}/{self.dtype}"


def build_clip(name: str, pretrained: str | None, device: torch.device, half: bool = False) -> ClipModel:
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    if name not in open_clip.list_models():
        raise ValueError(f"unknown CLIP model {name!r}; open_clip.list_models() lists the known ones")
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
    if half and device.type in ("cuda", "mps"):  # float16 is slow on a CPU: ignored there
        model.half()
    visual = model.visual
    size = visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN)
    std = tuple(getattr(visual, "image_std", None) or OPENAI_DATASET_STD)
    return ClipModel(model, open_clip.get_tokenizer(name), name, pretrained, device, size, mean, std)


def build_sam(kind: str, device: torch.device, random_weights: bool = False,
              checkpoint_dir: str | Path | None = None, download: bool = True) -> nn.Module:
    if kind in SAM2_MODELS:
        return build_sam2_model(kind, device, random_weights, checkpoint_dir, download)
    if kind not in SAM_BUILDERS:
        raise ValueError(f"unknown SAM model {kind!r}; choose from {', '.join(SAM_KINDS)}")
    if kind in RANDOM_ONLY_SAM and not random_weights:
        raise ValueError(f"SAM model {kind!r} exists only with random weights (for tests)")
    with seeded_init():
        model = SAM_BUILDERS[kind]()
    if not random_weights:
        path = ensure_sam_checkpoint(kind, Path(checkpoint_dir) if checkpoint_dir else None,
                                     download_missing=download)
        try:
            model.load_state_dict(load_state_dict(path))
        except RuntimeError as exc:  # wrong keys or shapes: a file of another kind
            raise WeightsError(f"{path} does not hold SAM {kind} weights ({exc}); delete it to fetch it "
                               "again") from exc
    # Same outputs, a tenth of the global-attention memory: see lean_attention.
    return lean_sam_attention(model).to(device).eval().requires_grad_(False)


def sam_at_resolution(sam: nn.Module, size: int) -> nn.Module:
    """The same SAM (shared weights) run at a `size` x `size` input instead of 1024.

    SAM's encoder cost grows with the square of its input (and its global attention faster still), and
    the mask decoder attends over the image embedding for every point prompt, so 512 px makes both
    about 4x cheaper on a CPU, for coarser masks. The absolute position table is resized bicubically;
    the relative position tables are already interpolated by SAM for other sizes.
    """
    if is_sam2(sam):
        return sam2_at_resolution(sam, size)
    encoder = sam.image_encoder
    if size == encoder.img_size:
        return sam
    patch = encoder.patch_embed.proj.kernel_size[0]
    if size % patch:
        raise ValueError(f"SAM input size must be a multiple of {patch}")
    grid = size // patch
    small_encoder = copy.copy(encoder)
    small_encoder._parameters = dict(encoder._parameters)
    small_encoder.img_size = size
    if encoder.pos_embed is not None:
        pos = encoder.pos_embed.permute(0, 3, 1, 2)
        pos = torch.nn.functional.interpolate(pos, size=(grid, grid), mode="bicubic", align_corners=False)
        small_encoder.pos_embed = nn.Parameter(pos.permute(0, 2, 3, 1), requires_grad=False)
    return with_modules(sam, image_encoder=small_encoder,
                        prompt_encoder=prompt_encoder_at(sam.prompt_encoder, size, grid))


def input_size_of(sam: nn.Module) -> int:
    """The square input side of a SAM or SAM 2.1 model."""
    return sam.image_size if is_sam2(sam) else sam.image_encoder.img_size


class ModelCache:
    """Loaded models by (kind, name, weights, device); loading happens once even under concurrent calls."""

    def __init__(self) -> None:
        self._models: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._models:
                log.info("loading %s", key)
                self._models[key] = build()
            return self._models[key]

    def clip(self, name: str, pretrained: str | None, device: torch.device, half: bool = False) -> ClipModel:
        return self.get(("clip", name, pretrained, str(device), half),
                        lambda: build_clip(name, pretrained, device, half))

    def sam(self, kind: str, device: torch.device, random_weights: bool = False,
            checkpoint_dir: str | Path | None = None, download: bool = True, input_size: int = 1024) -> nn.Module:
        key = ("sam", kind, random_weights, str(device), str(checkpoint_dir))
        full = self.get(key, lambda: build_sam(kind, device, random_weights, checkpoint_dir, download))
        if input_size == input_size_of(full):
            return full
        return self.get((*key, input_size), lambda: sam_at_resolution(full, input_size))

    def clear(self) -> None:
        with self._lock:
            self._models.clear()

    def __len__(self) -> int:
        return len(self._models)


MODELS = ModelCache()
