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
    neighbourhood: NACLIP's Gaussian neighbourhood prior, its standard deviation in patches (0 = none):
        exp(-|p_i - p_j|^2 / (2 sigma^2)) over the patch-grid offset of tokens i and j, unnormalised, added
        to the scaled self-similarity logits before the softmax, zero in the class token's row and column.
    ablation: a variant kept to isolate one change of a published method; the app's side-by-side
        comparison shows only the published ones (``COMPARED_VARIANTS``).
    """

    attention: str = "identity"
    residual: float = 0.2
    ffn: bool = True
    description: str = ""
    neighbourhood: float = 0.0
    ablation: bool = False


SEVERANCE_VARIANTS: dict[str, Severance] = {
    "deop": Severance("identity", 0.2, True, "DeOP: own value projection, residual x0.2, FFN kept"),
    "maskclip": Severance("identity", 1.0, True, "MaskCLIP: value-only attention, block otherwise unchanged"),
    "sclip": Severance("qq+kk", 1.0, True, "SCLIP: q-q plus k-k attention"),
    "clearclip": Severance("qq", 0.0, False, "ClearCLIP: q-q attention, no residual, no FFN"),
    # NACLIP as published: sinahmr/NACLIP clip/model.py 153-207 (gaussian_window, get_attention_addition,
    # custom_attn with attn_strategy "naclip"), arch "reduced" (no residual, no FFN) and gaussian_std=5
    # (naclip.py 21: the defaults its configs run).
    "naclip": Severance("kk", 0.0, False, "NACLIP: k-k attention plus a Gaussian neighbourhood prior (sigma 5 "
                        "patches), no residual, no FFN", neighbourhood=5.0),
    "none": Severance("vanilla", 1.0, True, "Plain CLIP: every token goes through the unchanged blocks"),
    # NACLIP's own ablation without the prior (its attn_strategy "kk", arch "reduced"): what "naclip" was here
    # before the prior was added.
    "naclip-noprior": Severance("kk", 0.0, False, "NACLIP without its neighbourhood prior (the paper's ablation): "
                                "k-k attention, no residual, no FFN", ablation=True),
}

# The published methods, compared side by side in the app (ablations are chosen by name only).
COMPARED_VARIANTS: tuple[str, ...] = tuple(name for name, spec in SEVERANCE_VARIANTS.items() if not spec.ablation)


def severance(variant: str | Severance) -> Severance:
    """The spec of a variant given by name (or the spec itself)."""
    if isinstance(variant, Severance):
        return variant
    if variant not in SEVERANCE_VARIANTS:
        raise OptionError(f"unknown severance variant {variant!r}; choose from {', '.join(SEVERANCE_VARIANTS)}")
    return SEVERANCE_VARIANTS[variant]
