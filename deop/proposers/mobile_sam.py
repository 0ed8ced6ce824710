"""MobileSAM: SAM's prompt encoder and mask decoder behind a TinyViT-5M image encoder distilled from
SAM ViT-H, from the official code as packaged on PyPI (``mobilesam-mirror``, import ``mobile_sam``).

Why have it: its encoder at SAM's full 1024 px input costs about a tenth of vit_b's on a CPU, so it gives
full-resolution masks for less than vit_b pays at 1024 px. It shares SAM's decoder, generator and
post-processing, so it is SAM's family with another encoder. TinyViT's last stage reshapes to a fixed
64 x 64 grid, so it runs at 1024 px only (``sam_input_size`` does not apply).

The weights are the official ``weights/mobile_sam.pt`` from the authors' repository. They publish no
checksum; the SHA-256 here is the one micro-sam's model registry pins (beside SAM's own, which match
ours), and the same file's copy on the Hugging Face Hub (``dhkim2810/MobileSAM``) has it too.
"""

from __future__ import annotations

import warnings
from typing import Any

from ..weights import Checkpoint
from .base import ProposerSpec
from .sam import SamFamily


class MobileSamFamily(SamFamily):
    name = "mobile_sam"
    package = "mobile_sam"
    install_hint = "MobileSAM needs the mobile_sam package: pip install mobilesam-mirror timm (make install does this)"

    def _new(self, spec: ProposerSpec) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # timm's deprecated import paths inside TinyViT
            from mobile_sam.build_sam import build_sam_vit_t

            return build_sam_vit_t(checkpoint=None)

    def _prepare(self, model: Any) -> Any:
        return model  # TinyViT has windowed attention only: nothing like SAM's global-attention peak to trim

    def at_input_size(self, model: Any, size: int) -> Any:
        if size != self.input_size(model):
            from ..errors import OptionError

            raise OptionError(f"MobileSAM runs at {self.input_size(model)} px only, not {size}")
        return model

    def _stock_class(self) -> type:
        from mobile_sam import SamAutomaticMaskGenerator

        return SamAutomaticMaskGenerator

    def stock_model(self, model: Any) -> Any:
        from contextlib import nullcontext

        return nullcontext(model)


MOBILE_SAM = MobileSamFamily()

SPECS = (
    ProposerSpec("mobile_sam", "MobileSAM", MOBILE_SAM, {}, Checkpoint(
        "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt", "mobile_sam.pt",
        "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f", "micro-sam's model registry"),
        in_app=True, fixed_input_size=1024,
        description="MobileSAM (TinyViT-5M encoder distilled from SAM ViT-H, SAM's decoder)"),
)
