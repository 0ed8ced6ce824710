"""Classification Anchor Learning (CAL): 100 learned queries read the mask-guided CLIP features, each query
tied to one generator proposal, and give that proposal's embedding in CLIP's joint space.

Read in CongHan0808/DeOP at 614454c:
- ``mask_former/zero_shot_clipfeat_upsample_vit16_query2D_maskvit.py`` 125-161, 272-307: d_model 512,
  8 heads, FFN 1024, post-norm, ``NUM_DECODER_LAYER 1``; 100 ``query_embedding`` vectors are the queries'
  positions and their targets start at zero; the memory is the L2-normalised CLIP features, its keys get a
  2-D sine encoding (``PositionEmbeddingSine(256, normalize=True)``); the proposal masks are
  sigmoid(mask logits) resized bilinearly to the CLIP grid (sigmoid first, unlike block 11).
- ``mask_former/modeling/transformer/transformer.py``: ``TransformerDecoderLinear`` (377-447) runs the
  layers, then the output layer on the last layer's output (``decoder.norm`` only normalises the
  intermediate outputs, which inference discards); ``TransformerDecoderLayerLinear.forward_post`` (651-696,
  ``DECODER_MASK_FEATURE False``: a plain cross-attention); ``TransformerDecoderOutLayerLinear.forward_post``
  (769-820): self-attention + norm1, then ``MultiHeadAttentionMy`` with ``outDecoderLayer`` (940-1044):
  q and k projected, v the raw memory, weights softmax(q k^T / sqrt(64)) multiplied per head by query i's
  mask, not renormalised, no output projection; the result is L2-normalised.
- ``mask_former/modeling/transformer/position_encoding.py`` 12-57: the sine encoding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .generator import probabilities_at

D_MODEL, HEADS, FFN, N_QUERIES = 512, 8, 1024, 100


def sine_position(gh: int, gw: int, channels: int = D_MODEL, temperature: float = 10000.0,
                  device: torch.device | None = None) -> torch.Tensor:
    """[gh*gw, channels] DETR's normalised 2-D sine encoding (y half first, sin and cos interleaved)."""
    half = channels // 2
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, gh + 1, dtype=torch.float32, device=device)[:, None].expand(gh, gw)
    x = torch.arange(1, gw + 1, dtype=torch.float32, device=device)[None, :].expand(gh, gw)
    y = y / (gh + eps) * scale
    x = x / (gw + eps) * scale
    dim_t = torch.arange(half, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / half)

    def encode(t: torch.Tensor) -> torch.Tensor:
        t = t[..., None] / dim_t
        return torch.stack((t[..., 0::2].sin(), t[..., 1::2].cos()), dim=-1).flatten(-2)

    return torch.cat([encode(y), encode(x)], dim=-1).reshape(gh * gw, channels)


class CalLayer(nn.Module):
    """The one post-norm decoder layer: self-attention, cross-attention to the CLIP features, FFN."""

    def __init__(self) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(D_MODEL, HEADS)
        self.cross_attn = nn.MultiheadAttention(D_MODEL, HEADS)
        self.linear1 = nn.Linear(D_MODEL, FFN)
        self.linear2 = nn.Linear(FFN, D_MODEL)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(D_MODEL) for _ in range(3))

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor,
                pos: torch.Tensor) -> torch.Tensor:
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.self_attn(q, q, tgt, need_weights=False)[0])
        tgt = self.norm2(tgt + self.cross_attn(tgt + query_pos, memory + pos, memory, need_weights=False)[0])
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class QKProjection(nn.Module):
    """The output layer's packed q, k, v projection (the official ``multihead_attn_my``); v's third is unused."""

    def __init__(self) -> None:
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * D_MODEL, D_MODEL))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * D_MODEL))
        nn.init.xavier_uniform_(self.in_proj_weight)


class CalOutput(nn.Module):
    """The output layer: self-attention + norm, then mask-weighted attention whose values are the raw CLIP
    features (only q and k are projected: the value third of ``in_proj_weight`` is in the checkpoint and
    unused)."""

    def __init__(self) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(D_MODEL, HEADS)
        self.norm = nn.LayerNorm(D_MODEL)
        self.read = QKProjection()

    def weights(self, tgt: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor,
                masks: torch.Tensor) -> torch.Tensor:
        """[heads, Q, gh*gw] softmax(q k^T / sqrt(d_head)) times each query's mask, unnormalised."""
        d, hd = D_MODEL, D_MODEL // HEADS
        w, b = self.read.in_proj_weight, self.read.in_proj_bias
        q = F.linear(tgt + query_pos, w[:d], b[:d])
        k = F.linear(memory + pos, w[d:2 * d], b[d:2 * d])
        q = q.reshape(len(q), HEADS, hd).transpose(0, 1) * hd ** -0.5
        k = k.reshape(len(k), HEADS, hd).transpose(0, 1)
        return (q @ k.transpose(1, 2)).softmax(dim=-1) * masks[None]

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor,
                masks: torch.Tensor) -> torch.Tensor:
        q = tgt + query_pos
        tgt = self.norm(tgt + self.self_attn(q, q, tgt, need_weights=False)[0])
        w = self.weights(tgt, query_pos, memory, pos, masks)
        v = memory.reshape(len(memory), HEADS, D_MODEL // HEADS).transpose(0, 1)
        out = (w @ v).transpose(0, 1).reshape(len(tgt), D_MODEL)
        return F.normalize(out, dim=-1, eps=1e-10)


class Cal(nn.Module):
    """CAL: [Q, D] normalised proposal embeddings from [gh, gw, D] normalised CLIP features and the [Q, gh,
    gw] proposal masks (sigmoid probabilities on the CLIP grid)."""

    def __init__(self, n_queries: int = N_QUERIES) -> None:
        super().__init__()
        self.queries = nn.Embedding(n_queries, D_MODEL)
        self.layer = CalLayer()
        self.norm = nn.LayerNorm(D_MODEL)  # the official intermediate-output norm: loaded, unused at inference
        self.out = CalOutput()

    def forward(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        gh, gw, d = features.shape
        if len(masks) != len(self.queries.weight):
            raise ValueError(f"CAL has {len(self.queries.weight)} queries, one per proposal; got {len(masks)} masks")
        memory = features.reshape(gh * gw, d)
        pos = sine_position(gh, gw, d, device=features.device)
        query_pos = self.queries.weight
        tgt = self.layer(torch.zeros_like(query_pos), query_pos, memory, pos)
        return self.out(tgt, query_pos, memory, pos, masks.reshape(len(masks), gh * gw).to(features.dtype))


def proposal_masks(mask_logits: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[Q, gh, gw] CAL's masks: sigmoid of the logits, then resized bilinearly to the CLIP grid."""
    return probabilities_at(mask_logits.float(), grid)
