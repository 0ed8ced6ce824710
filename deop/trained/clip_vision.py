"""The trained model's CLIP image pass: ViT-B/16 with learned position embeddings and block 11's mask-guided
patch severance, one forward over the whole (ImageNet-normalised, padded) image.

Read in CongHan0808/DeOP at 614454c, ``third_party/CLIP/clip/model.py``:
- ``VisionTransformerLearnPosition.forward`` (1179-1331): CLIP's own 14 x 14 table and a learned 24 x 24
  table (``learned_position``, trained at 384 px), each resized bicubically to the image's patch grid (the
  class slot kept), are both added to the tokens before ``ln_pre``.
- ``ResidualAttentionBlockVitPosition.forward`` (557-602), blocks in ``POSITION_LAYERS`` [1..5]: the
  block's own learned 24 x 24 table, resized the same way, is added to the residual stream itself before
  the attention (``x = x + pos``; then ``x + attn(ln_1(x))``, ``x + mlp(ln_2(x))``).
- ``multi_head_attention_forward_vit_softmax_noattn`` (2390-2497), block 11 (``LAYERMASKVIT [11]``): the
  generator's 100 mask logits (stride 4) are resized bilinearly to the patch grid, then sigmoid; each patch
  token's value is scaled by the sum over the masks, the class token's by 100 (a column of ones per
  mask); the output projection follows and the residual is kept at 1 (``PS_SHORTCUT`` is popped and
  unused). The q.k softmax it computes is never used. Then the FFN, ``ln_post`` and ``proj``; the model
  L2-normalises every patch feature (``zero_shot_clipfeat_upsample_vit16_query2D_maskvit.py`` 266-272).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..clip.dense import embed_patches, resize_pos_embed
from .generator import logits_at

POSITION_BLOCKS = (1, 2, 3, 4, 5)
SEVERED_BLOCK = 11
LEARNED_GRID = 24  # 384 px / 16: the resolution the learned tables were trained at


class LearnedPositions(nn.Module):
    """The learned tables: ``input`` (added before ``ln_pre``) and one per block in ``POSITION_BLOCKS``."""

    def __init__(self, width: int = 768, grid: int = LEARNED_GRID, blocks: tuple[int, ...] = POSITION_BLOCKS) -> None:
        super().__init__()
        scale = width ** -0.5
        self.input = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.blocks = nn.ParameterDict({str(b): nn.Parameter(scale * torch.randn(grid * grid + 1, width))
                                        for b in blocks})

    def at(self, table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return resize_pos_embed(table, grid)


def mask_scale(mask_logits: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[1 + gh*gw] the severed block's scale per token: the class token's is the number of masks, each
    patch's the sum over the masks of sigmoid(logits resized bilinearly to the patch grid)."""
    s = logits_at(mask_logits.float(), grid).sigmoid().sum(dim=0).reshape(-1)
    return torch.cat([s.new_full((1,), float(len(mask_logits))), s])


def severed_block(block: nn.Module, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x + W_o(s * (W_v LN1(x) + b_v)) + b_o``, then the block's FFN; x is [B, L, C] batch-first."""
    attn: nn.MultiheadAttention = block.attn
    c = x.shape[-1]
    v = F.linear(block.ln_1(x), attn.in_proj_weight[2 * c:], attn.in_proj_bias[2 * c:])
    x = x + block.ls_1(attn.out_proj(scale[None, :, None].to(v.dtype) * v))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def encode_masked(clip_model: nn.Module, positions: LearnedPositions, pixels: torch.Tensor,
                  mask_logits: torch.Tensor) -> torch.Tensor:
    """[gh, gw, D] L2-normalised patch features of one image [1, 3, H, W] (sides multiples of 16) whose
    generator mask logits are `mask_logits` [Q, h, w]."""
    visual = clip_model.visual
    x, grid = embed_patches(clip_model, pixels)
    x = x + resize_pos_embed(visual.positional_embedding, grid).to(x.dtype)
    x = x + positions.at(positions.input, grid).to(x.dtype)
    x = visual.ln_pre(x)
    blocks = list(visual.transformer.resblocks)
    for i, block in enumerate(blocks):
        if str(i) in positions.blocks:
            x = x + positions.at(positions.blocks[str(i)], grid).to(x.dtype)
        if i == SEVERED_BLOCK:
            x = severed_block(block, x, mask_scale(mask_logits, grid).to(x.device))
        else:
            x = block(x)
    x = visual.ln_post(x[:, 1:]) @ visual.proj
    return F.normalize(x[0].float(), dim=-1).reshape(grid[0], grid[1], -1)
