"""Segment Anything (SAM v1: ViT-B, -L, -H, and a tiny random-only ViT for tests), from Meta's
``segment_anything`` package.

Its checkpoints come from Meta's own server with published SHA-256 sums. The encoder runs at any input
size that is a multiple of 16 (weights shared; 448 px is about 8x cheaper on a CPU), and its global
attention runs a few heads at a time (``lean_attention``: same output, a tenth of the memory).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from ..weights import Checkpoint, ensure_weights, load_into, seeded_init
from .base import MaskSet, ProposerFamily, ProposerSpec, prompt_encoder_at, with_modules

__all__ = ["SAM", "SPECS", "SamFamily", "needs_float32_points"]


class SamFamily(ProposerFamily):
    """SAM's plain-ViT encoder with its prompt encoder and mask decoder; MobileSAM subclasses it."""

    name = "sam"
    package = "segment_anything"
    install_hint = "SAM needs the segment-anything package: pip install segment-anything==1.0"

    def _new(self, spec: ProposerSpec) -> Any:
        from segment_anything.build_sam import _build_sam

        a = spec.arch
        return _build_sam(a["embed_dim"], a["depth"], a["heads"], list(a["global_attn"]), checkpoint=None)

    def build(self, spec: ProposerSpec, random_weights: bool, checkpoint_dir: Path | None, download: bool) -> Any:
        self.require()
        spec.check_random_only(random_weights)
        with seeded_init():
            model = self._new(spec)
        if not random_weights:
            load_into(model, ensure_weights(spec.weights, spec.title, checkpoint_dir, download), spec.title)
        return self._prepare(model).eval().requires_grad_(False)

    def _prepare(self, model: Any) -> Any:
        from .lean_attention import lean_sam_attention

        return lean_sam_attention(model)  # same outputs, a tenth of the global-attention memory

    def input_size(self, model: Any) -> int:
        return model.image_encoder.img_size

    def at_input_size(self, model: Any, size: int) -> Any:
        """SAM's encoder cost grows with the square of its input (and its global attention faster still),
        and the mask decoder attends over the image embedding for every point prompt, so 512 px makes both
        about 4x cheaper on a CPU, for coarser masks. The absolute position table is resized bicubically;
        the relative position tables are already interpolated by SAM for other sizes."""
        import torch

        encoder = model.image_encoder
        if size == encoder.img_size:
            return model
        patch = encoder.patch_embed.proj.kernel_size[0]
        if size % patch:
            from ..errors import OptionError

            raise OptionError(f"SAM input size must be a multiple of {patch}, got {size}")
        grid = size // patch
        small_encoder = copy.copy(encoder)
        small_encoder._parameters = dict(encoder._parameters)
        small_encoder.img_size = size
        if encoder.pos_embed is not None:
            pos = encoder.pos_embed.permute(0, 3, 1, 2)
            pos = torch.nn.functional.interpolate(pos, size=(grid, grid), mode="bicubic", align_corners=False)
            small_encoder.pos_embed = torch.nn.Parameter(pos.permute(0, 2, 3, 1), requires_grad=False)
        return with_modules(model, image_encoder=small_encoder,
                            prompt_encoder=prompt_encoder_at(model.prompt_encoder, size, grid))

    def _stock_class(self) -> type:
        from segment_anything import SamAutomaticMaskGenerator

        return SamAutomaticMaskGenerator

    def generate(self, model: Any, image: np.ndarray, config: Any, deadline: Any = None,
                 float32_points: bool | None = None) -> MaskSet:
        """float32_points: send the point prompts as float32 (default: on Apple's MPS only, which has no
        float64; elsewhere they stay float64 as stock sends them, for exactly the stock masks)."""
        from .amg import FastMaskGenerator

        if float32_points is None:
            float32_points = needs_float32_points(model.device)
        generator = FastMaskGenerator(model, "sam", **config.generator_kwargs(), float32_points=float32_points,
                                      before_batch=_checker(deadline), keep_embedding=True)
        return generator.generate(image)

    def stock_generator(self, model: Any, config: Any) -> Any:
        return self._stock_class()(model, output_mode="binary_mask", **config.generator_kwargs())

    def stock_model(self, model: Any) -> Any:
        from .lean_attention import stock_attention

        return stock_attention(model)


def needs_float32_points(device: Any) -> bool:
    """SAM's automatic generator sends its float64 point grid to the model's device as it is, and Apple's
    MPS has no float64, so on a Mac every request failed ("Cannot convert a MPS Tensor to float64 dtype",
    segment-anything issue #94, open). The prompt encoder casts the points to float32 anyway; only the
    ``+ 0.5`` and the scaling before that cast change rounding, so float32 points are sent on MPS alone
    and the masks elsewhere stay exactly the stock generator's."""
    return getattr(device, "type", str(device)) == "mps"


def _checker(deadline: Any) -> Any:
    """The deadline's check before each batch of point prompts: the generators' unit of work."""
    return None if deadline is None else (lambda: deadline.check("mask proposals"))


SAM = SamFamily()
_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


def _spec(name: str, dims: tuple[int, int, int, tuple[int, ...]], weights: Checkpoint | None,
          **kw: Any) -> ProposerSpec:
    embed_dim, depth, heads, global_attn = dims
    return ProposerSpec(name, f"SAM {name}", SAM, {"embed_dim": embed_dim, "depth": depth, "heads": heads,
                                                   "global_attn": global_attn}, weights, **kw)


# The segment_anything registry's sizes, plus a tiny random-only config for tests and CI.
SPECS = (
    _spec("vit_b", (768, 12, 12, (2, 5, 8, 11)), Checkpoint(
        _URL + "sam_vit_b_01ec64.pth", "sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"), in_app=True,
        description="SAM ViT-B (91M parameters): the official DeOP demo's proposal model"),
    _spec("vit_l", (1024, 24, 16, (5, 11, 17, 23)), Checkpoint(
        _URL + "sam_vit_l_0b3195.pth", "sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622")),
    _spec("vit_h", (1280, 32, 16, (7, 15, 23, 31)), Checkpoint(
        _URL + "sam_vit_h_4b8939.pth", "sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e")),
    _spec("tiny", (64, 2, 2, (1,)), None, description="a 2-block SAM with random weights, for tests"),
)
