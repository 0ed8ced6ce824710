"""SAM 2.1 (Hiera backbones) as a second proposal backend behind the same interface as SAM.

Why have it: SAM 2.1's hierarchical encoder is several times cheaper than SAM's plain ViT. On a CPU the
mask decoder, run once per point prompt, dominates both, so the gain is smaller there: at equal settings
(the ``fast`` preset) Hiera-T measured about 1.4x faster end to end than SAM vit_b (the README's
Performance section).

The ``sam2`` package is optional. PyPI has it only as a source distribution whose build wants torch in
pip's isolated build environment, so ``make install`` installs it with ``--no-build-isolation`` and
``SAM2_BUILD_CUDA=0``. Its CUDA extension only fills small holes in low-resolution masks; without it
SAM 2 skips that step itself (with a warning per batch), and so does this backend (silently).
"""

from __future__ import annotations

import copy
import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import ProposalConfig
from .timing import Deadline, DeadlineBatches
from .weights import HubCheckpoint, WeightsError, ensure_hub_checkpoint, load_state_dict, seeded_init

INSTALL_HINT = ("SAM 2.1 needs the optional sam2 package: "
                "SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0 (make install does this)")


@dataclass(frozen=True)
class Sam2Spec:
    """config: the Hydra config inside the sam2 package; checkpoint: where Meta publishes the weights."""

    config: str
    checkpoint: HubCheckpoint


# Model names are data; the four SAM 2.1 image backbones, smallest first.
SAM2_MODELS: dict[str, Sam2Spec] = {
    "sam2.1_hiera_t": Sam2Spec("configs/sam2.1/sam2.1_hiera_t.yaml",
                               HubCheckpoint("facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt")),
    "sam2.1_hiera_s": Sam2Spec("configs/sam2.1/sam2.1_hiera_s.yaml",
                               HubCheckpoint("facebook/sam2.1-hiera-small", "sam2.1_hiera_small.pt")),
    "sam2.1_hiera_b+": Sam2Spec("configs/sam2.1/sam2.1_hiera_b+.yaml",
                                HubCheckpoint("facebook/sam2.1-hiera-base-plus", "sam2.1_hiera_base_plus.pt")),
    "sam2.1_hiera_l": Sam2Spec("configs/sam2.1/sam2.1_hiera_l.yaml",
                               HubCheckpoint("facebook/sam2.1-hiera-large", "sam2.1_hiera_large.pt")),
}


def available() -> bool:
    try:
        import sam2  # noqa: F401
    except ImportError:
        return False
    return True


def is_sam2(model: nn.Module) -> bool:
    """SAM 2 models carry their decoder as ``sam_mask_decoder`` (SAM's is ``mask_decoder``)."""
    return hasattr(model, "sam_mask_decoder")


@functools.cache
def _has_extension() -> bool:
    """Asked on every request; a failed import is not cached by Python, so the answer is."""
    try:
        from sam2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


def build_sam2_model(kind: str, device: torch.device, random_weights: bool = False,
                     checkpoint_dir: str | Path | None = None, download: bool = True) -> nn.Module:
    """SAM 2.1 as ``sam2.build_sam.build_sam2`` builds it (same post-processing overrides), weights
    read with ``weights_only`` and strict keys."""
    if kind not in SAM2_MODELS:
        raise ValueError(f"unknown SAM 2.1 model {kind!r}; choose from {', '.join(SAM2_MODELS)}")
    if not available():
        raise WeightsError(INSTALL_HINT)
    from sam2.build_sam import build_sam2

    spec = SAM2_MODELS[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script deprecation inside sam2's modules
        with seeded_init():
            model = build_sam2(spec.config, None, device="cpu")
    if not random_weights:
        path = ensure_hub_checkpoint(spec.checkpoint, Path(checkpoint_dir) if checkpoint_dir else None,
                                     download_missing=download)
        state = load_state_dict(path)
        try:
            model.load_state_dict(state.get("model", state))
        except RuntimeError as exc:
            raise WeightsError(f"{path} does not hold SAM 2.1 {kind} weights ({exc}); delete it to fetch it "
                               "again") from exc
    return model.to(device).eval().requires_grad_(False)


def with_modules(module: nn.Module, **children: nn.Module) -> nn.Module:
    """A shallow copy of `module` with some child modules replaced; the others, and every weight, shared."""
    out = copy.copy(module)
    out._modules = {**module._modules, **children}
    return out


def prompt_encoder_at(prompt: nn.Module, size: int, grid: int) -> nn.Module:
    """A copy of a SAM or SAM 2 prompt encoder (both keep these three sizes) for a `size` px input whose
    embedding is `grid` x `grid`; the weights are shared."""
    prompt = copy.copy(prompt)
    prompt.image_embedding_size = (grid, grid)
    prompt.input_image_size = (size, size)
    prompt.mask_input_size = (4 * grid, 4 * grid)
    return prompt


def sam2_at_resolution(model: nn.Module, size: int) -> nn.Module:
    """The same SAM 2.1 (shared weights) run at `size` x `size` instead of 1024.

    Hiera interpolates its position embedding to any grid and the FPN neck is convolutional, so only the
    prompt encoder's notion of the image size changes; the predictor's feature sizes follow from
    ``image_size`` in ``Sam2Generator``.
    """
    if size == model.image_size:
        return model
    stride = 32  # Hiera: patch embedding 4, then three 2x query poolings
    if size % stride:
        raise ValueError(f"SAM 2.1 input size must be a multiple of {stride}")
    grid = size // model.backbone_stride
    small = with_modules(model, sam_prompt_encoder=prompt_encoder_at(model.sam_prompt_encoder, size, grid))
    small.image_size = size
    small.sam_image_embedding_size = grid
    return small


@functools.cache
def _generator_class():
    """Defined on first use, so that importing deop never imports sam2 (optional, and slow to import)."""
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    class Sam2Generator(DeadlineBatches, SAM2AutomaticMaskGenerator):
        pass

    return Sam2Generator


def sam2_generator(model: nn.Module, config: ProposalConfig, deadline: Deadline | None = None):
    """SAM2AutomaticMaskGenerator with our settings, checking the deadline before each batch of prompts."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script deprecation in SAM2Transforms
        generator = _generator_class()(model, output_mode="binary_mask", **config.generator_kwargs())
    generator.deadline = deadline or Deadline(None)
    s = model.image_size
    # SAM2ImagePredictor assumes 1024 px; its three feature levels are strides 4, 8 and 16.
    generator.predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    if not _has_extension():
        transforms = generator.predictor._transforms
        transforms.max_hole_area = transforms.max_sprinkle_area = 0
    return generator
