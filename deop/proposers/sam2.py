"""SAM 2.1 (Hiera backbones), from Meta's ``sam2`` package.

Why have it: SAM 2.1's hierarchical encoder is several times cheaper than SAM's plain ViT. On a CPU the
mask decoder, run once per point prompt, dominates both, so the gain is smaller there: at equal settings
(the ``fast`` preset) Hiera-T measured about 1.4x faster end to end than SAM vit_b (the README's
Performance section).

The ``sam2`` package is optional. PyPI has it only as a source distribution whose build wants torch in
pip's isolated build environment, so ``make install`` installs it with ``--no-build-isolation`` and
``SAM2_BUILD_CUDA=0``. Its CUDA extension only fills small holes in low-resolution masks; without it
SAM 2 skips that step itself (with a warning per batch), and so does this family (silently). Meta
publishes no checksums for SAM 2.1: its checkpoints come from the Hugging Face Hub, checked against the
SHA-256 the Hub declares (``weights.ensure_hub_checkpoint``).
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OptionError
from ..weights import HubCheckpoint, ensure_weights, load_into, seeded_init
from .base import MaskSet, ProposerFamily, ProposerSpec, prompt_encoder_at, with_modules


@functools.cache
def has_extension() -> bool:
    """Asked on every request; a failed import is not cached by Python, so the answer is."""
    try:
        from sam2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


def prepare_predictor(predictor: Any, model: Any) -> None:
    """SAM2ImagePredictor assumes a 1024 px input (its three feature levels are strides 4, 8 and 16) and
    the CUDA extension for hole filling; set both from the model and from what is installed."""
    s = model.image_size
    predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    if not has_extension():
        predictor._transforms.max_hole_area = predictor._transforms.max_sprinkle_area = 0


class Sam2Family(ProposerFamily):
    name = "sam2"
    package = "sam2"
    install_hint = ("SAM 2.1 needs the optional sam2 package: "
                    "SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0 (make install does this)")

    def build(self, spec: ProposerSpec, random_weights: bool, checkpoint_dir: Path | None, download: bool) -> Any:
        """SAM 2.1 as ``sam2.build_sam.build_sam2`` builds it (same post-processing overrides), weights read
        with ``weights_only`` and strict keys."""
        self.require()
        from sam2.build_sam import build_sam2

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.script deprecation inside sam2's modules
            with seeded_init():
                model = build_sam2(spec.arch["config"], None, device="cpu")
        if not random_weights:
            load_into(model, ensure_weights(spec.weights, spec.title, checkpoint_dir, download), spec.title,
                      key="model")
        return model.eval().requires_grad_(False)

    def input_size(self, model: Any) -> int:
        return model.image_size

    def at_input_size(self, model: Any, size: int) -> Any:
        """Hiera interpolates its position embedding to any grid and the FPN neck is convolutional, so only
        the prompt encoder's notion of the image size changes; the predictor's feature sizes follow from
        ``image_size`` (``prepare_predictor``)."""
        if size == model.image_size:
            return model
        stride = 32  # Hiera: patch embedding 4, then three 2x query poolings
        if size % stride:
            raise OptionError(f"SAM 2.1 input size must be a multiple of {stride}, got {size}")
        grid = size // model.backbone_stride
        small = with_modules(model, sam_prompt_encoder=prompt_encoder_at(model.sam_prompt_encoder, size, grid))
        small.image_size = size
        small.sam_image_embedding_size = grid
        return small

    def stock_generator(self, model: Any, config: Any) -> Any:
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.script deprecation in SAM2Transforms
            generator = SAM2AutomaticMaskGenerator(model, output_mode="binary_mask", **config.generator_kwargs())
        prepare_predictor(generator.predictor, model)
        return generator

    def generate(self, model: Any, image: np.ndarray, config: Any, deadline: Any = None) -> MaskSet:
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        from .amg import FastMaskGenerator
        from .sam import _checker

        area = config.min_mask_region_area  # stock SAM 2 hands it to its predictor (hole filling), not post hoc
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.script deprecation in SAM2Transforms
            predictor = SAM2ImagePredictor(model, max_hole_area=area, max_sprinkle_area=area)
            prepare_predictor(predictor, model)
            generator = FastMaskGenerator(model, "sam2", **config.generator_kwargs(), predictor=predictor,
                                          before_batch=_checker(deadline), keep_embedding=True)
            return generator.generate(image)


SAM2 = Sam2Family()


def _spec(size: str, repo: str, filename: str, sha256: str, **kw: Any) -> ProposerSpec:
    return ProposerSpec(f"sam2.1_hiera_{size}", f"SAM 2.1 hiera_{size}", SAM2,
                        {"config": f"configs/sam2.1/sam2.1_hiera_{size}.yaml"},
                        HubCheckpoint(f"facebook/sam2.1-hiera-{repo}", filename, sha256), **kw)


# The four SAM 2.1 image backbones, smallest first, with the SHA-256 the Hub declares for each file.
SPECS = (
    _spec("t", "tiny", "sam2.1_hiera_tiny.pt",
          "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69", in_app=True,
          description="SAM 2.1 Hiera-T (39M parameters)"),
    _spec("s", "small", "sam2.1_hiera_small.pt",
          "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38"),
    _spec("b+", "base-plus", "sam2.1_hiera_base_plus.pt",
          "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5"),
    _spec("l", "large", "sam2.1_hiera_large.pt",
          "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318"),
)
