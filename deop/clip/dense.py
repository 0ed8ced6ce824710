"""Dense CLIP features in one forward pass: DeOP's patch severance and its training-free cousins.

CLIP's last blocks mix every patch token with the global context, which is what makes the class token a
good image descriptor and the patch tokens poor local ones. Patch severance changes only the final
block(s) so that each patch token keeps its own content, and then projects *every* token into the joint
image-text space. One pass over the whole image then classifies any number of masks by pooling.

A variant is data (``deop.clip.severance``), not code: the attention kind, the residual scale and whether
the FFN runs. That keeps the published methods side by side and a new one a one-line addition.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..casts import autocast_weight
from ..errors import OptionError
from .severance import Severance, severance

__all__ = ["encode_dense", "resize_pos_embed", "patch_size_of", "neighbourhood_prior", "POSITION_RULES"]


def patch_size_of(model: nn.Module) -> int:
    """Patch size of an open_clip ViT (conv1's stride)."""
    conv = model.visual.conv1
    return int(conv.kernel_size[0])


def embed_patches(model: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """The class token and the patch embeddings [B, 1 + gh * gw, width] of images [B, 3, H, W] whose sides
    are multiples of the patch size, before any position embedding, and the grid (gh, gw)."""
    visual = model.visual
    p = patch_size_of(model)
    b, _, h, w = pixels.shape
    if h % p or w % p:
        raise ValueError(f"image sides ({h}x{w}) must be multiples of the patch size {p}")
    x = visual.conv1(pixels.to(visual.conv1.weight.dtype))
    x = x.reshape(b, x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(b, -1, -1)
    return torch.cat([cls, x], dim=1), (h // p, w // p)


# How the position table is resized to a new grid: "size" interpolates to exactly (gh, gw); "official" is
# the rule of SCLIP, ClearCLIP and NACLIP (interpolate_pos_encoding in their clip/model.py or open_clip's
# transformer.py): scale_factor (g' + 0.1) / g, which gives the same grid but samples the table at
# slightly different points (a cosine of about 0.99998 per patch at 448 px). The training-free benchmark
# protocol uses "official"; everything else keeps "size".
POSITION_RULES = ("size", "official")


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], rule: str = "size") -> torch.Tensor:
    """Bicubic resize of a [1 + g*g, C] position table to a (gh, gw) patch grid; the class slot is kept.

    At the native grid this returns the table itself, so the plain forward is reproduced exactly (the
    official rule does the same there).
    """
    if rule not in POSITION_RULES:
        raise ValueError(f"unknown position rule {rule!r}; choose from {', '.join(POSITION_RULES)}")
    n_patches = pos_embed.shape[0] - 1
    g = int(round(math.sqrt(n_patches)))
    if g * g != n_patches:
        raise ValueError(f"position table of {n_patches} patches is not a square grid")
    if tuple(grid) == (g, g):
        return pos_embed
    cls_pos, patch_pos = pos_embed[:1], pos_embed[1:]
    patch_pos = patch_pos.reshape(1, g, g, -1).permute(0, 3, 1, 2).float()
    if rule == "official":
        patch_pos = F.interpolate(patch_pos, scale_factor=((grid[0] + 0.1) / g, (grid[1] + 0.1) / g), mode="bicubic",
                                  align_corners=False)
    else:
        patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos_embed.dtype)
    return torch.cat([cls_pos, patch_pos], dim=0)


def _qkv(block: nn.Module, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    attn: nn.MultiheadAttention = block.attn
    q, k, v = F.linear(y, autocast_weight(attn, "in_proj_weight"), attn.in_proj_bias).chunk(3, dim=-1)
    return q, k, v


@functools.lru_cache(maxsize=8)
def _neighbourhood_cached(gh: int, gw: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32),
                                indexing="ij")
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    squared = (rows[:, None] - rows[None, :]).square() + (cols[:, None] - cols[None, :]).square()  # exact integers
    prior = torch.exp(-squared / (2 * sigma**2))
    return F.pad(prior, (1, 0, 1, 0)).to(device, dtype)  # the class token: no prior, in its row or its column


def neighbourhood_prior(grid: tuple[int, int], sigma: float, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """NACLIP's Gaussian neighbourhood prior [1 + gh*gw, 1 + gh*gw] (token 0 the class token, patches in
    row-major order): exp(-|p_i - p_j|^2 / (2 sigma^2)) over patch-grid positions, unnormalised, zero in
    the class token's row and column. Cached per grid (it is as large as the attention map)."""
    return _neighbourhood_cached(int(grid[0]), int(grid[1]), float(sigma), torch.device(device), dtype)


def _self_similarity_attention(block: nn.Module, y: torch.Tensor, spec: Severance,
                               grid: tuple[int, int] | None) -> torch.Tensor:
    attn: nn.MultiheadAttention = block.attn
    b, n, c = y.shape
    heads = attn.num_heads
    q, k, v = (t.reshape(b, n, heads, c // heads).transpose(1, 2) for t in _qkv(block, y))
    scale = (c // heads) ** -0.5
    prior = None
    if spec.neighbourhood:
        if grid is None or 1 + grid[0] * grid[1] != n:
            raise ValueError(f"the neighbourhood prior needs the patch grid of the {n - 1} patch tokens")
        prior = neighbourhood_prior(grid, spec.neighbourhood, y.device, y.dtype)
    weights = 0
    for part in spec.attention.split("+"):
        a = {"qq": q, "kk": k}[part]
        logits = a @ a.transpose(-2, -1) * scale
        weights = weights + torch.softmax(logits if prior is None else logits + prior, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, n, c)
    return attn.out_proj(out)


def _severed_block(block: nn.Module, x: torch.Tensor, spec: Severance,
                   grid: tuple[int, int] | None = None) -> torch.Tensor:
    """One residual block with its attention replaced as `spec` says; every token stays batch-first.
    `grid`: the (gh, gw) patch grid behind tokens 1.., which the neighbourhood prior needs."""
    y = block.ln_1(x)
    if spec.attention == "identity":
        attn_out = block.attn.out_proj(_qkv(block, y)[2])
    elif spec.attention in ("qq", "kk", "qq+kk"):
        attn_out = _self_similarity_attention(block, y, spec, grid)
    else:
        raise ValueError(f"unknown attention kind {spec.attention!r}")
    x = spec.residual * x + block.ls_1(attn_out)
    if spec.ffn:
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x


def _run_blocks(transformer: nn.Module, x: torch.Tensor, spec: Severance, n_severed: int,
                grid: tuple[int, int] | None = None) -> torch.Tensor:
    blocks = list(transformer.resblocks)
    n_plain = len(blocks) if spec.attention == "vanilla" else len(blocks) - n_severed
    batch_first = getattr(transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for block in blocks[:n_plain]:
        x = block(x)
    if not batch_first:
        x = x.transpose(0, 1)
    for block in blocks[n_plain:]:
        x = _severed_block(block, x, spec, grid)
    return x


def encode_dense(
    model: nn.Module,
    pixels: torch.Tensor,
    variant: str | Severance = "deop",
    n_severed: int = 1,
    return_cls: bool = False,
    position_rule: str = "size",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Projected patch embeddings [B, D, H/p, W/p] of an open_clip CLIP model, after ln_post and proj.

    `pixels` is a normalised batch [B, 3, H, W] whose sides are multiples of the patch size; any size
    works because the position table is resized to the grid. The embeddings are not L2-normalised (the
    pooling sums them first, as DeOP does). With `return_cls` the projected class token [B, D] comes
    too: with variant "none" at the native resolution it equals `model.encode_image`. `position_rule`:
    how the position table is resized (``POSITION_RULES``; "official" for the training-free protocol).
    """
    spec = severance(variant)
    visual = model.visual
    depth = len(visual.transformer.resblocks)
    if not 1 <= n_severed <= depth:
        raise OptionError(f"n_severed must be between 1 and {depth}, got {n_severed}")
    b = pixels.shape[0]
    x, grid = embed_patches(model, pixels)
    x = x + resize_pos_embed(visual.positional_embedding, grid, position_rule).to(x.dtype)
    x = visual.patch_dropout(x)
    x = visual.ln_pre(x)
    x = _run_blocks(visual.transformer, x, spec, n_severed, grid)
    x = visual.ln_post(x)
    if visual.proj is not None:
        x = x @ visual.proj
    patches = x[:, 1:].transpose(1, 2).reshape(b, -1, grid[0], grid[1])
    if return_cls:
        return patches, x[:, 0]
    return patches
