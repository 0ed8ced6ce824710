"""The training-free severance variants as data: how the final block(s) of CLIP's image encoder treat
their tokens (``deop.clip.dense`` applies them). Kept apart from the torch code so that the settings'
choices can be listed without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import OptionError


@dataclass(frozen=True)
class Severance:
    """How the severed final block(s) treat their tokens.

    attention: "vanilla" (unchanged), "identity" (token i gets out_proj(v_i): DeOP, MaskCLIP),
        "qq", "kk", "qq+kk" (self-similarity attention: ClearCLIP, NACLIP, SCLIP).
    residual: scale of the skip connection around attention (1 = unchanged, 0 = dropped).
    ffn: whether the block's MLP still runs.
    """

    attention: str = "identity"
    residual: float = 0.2
    ffn: bool = True
    description: str = ""


SEVERANCE_VARIANTS: dict[str, Severance] = {
    "deop": Severance("identity", 0.2, True, "DeOP: own value projection, residual x0.2, FFN kept"),
    "maskclip": Severance("identity", 1.0, True, "MaskCLIP: value-only attention, block otherwise unchanged"),
    "sclip": Severance("qq+kk", 1.0, True, "SCLIP: q-q plus k-k attention"),
    "clearclip": Severance("qq", 0.0, False, "ClearCLIP: q-q attention, no residual, no FFN"),
    "naclip": Severance("kk", 0.0, False, "NACLIP-style: k-k attention, no residual, no FFN (no neighbourhood prior)"),
    "none": Severance("vanilla", 1.0, True, "Plain CLIP: every token goes through the unchanged blocks"),
}


def severance(variant: str | Severance) -> Severance:
    """The spec of a variant given by name (or the spec itself)."""
    if isinstance(variant, Severance):
        return variant
    if variant not in SEVERANCE_VARIANTS:
        raise OptionError(f"unknown severance variant {variant!r}; choose from {', '.join(SEVERANCE_VARIANTS)}")
    return SEVERANCE_VARIANTS[variant]
