"""SAM's image-encoder attention computed a few heads at a time, to bound peak memory.

SAM's ViT runs four blocks of global attention over the 64 x 64 token grid of a 1024 px input. The stock
code builds the whole (heads, 4096, 4096) float map at once and then adds the two relative-position terms
out of place, so one such block holds three copies of an 805 MB map for vit_b (1.1 GB each for vit_l/h):
that, not the weights, is what lifted the demo's peak RSS past 4 GB. Here the same operations run on
groups of heads whose map fits ``budget_bytes``, with the additions done in place. Every head is computed
by the same formula as before; only the batching of the matrix products changes, so results agree with
the stock forward to float rounding (the tests check 1e-5), and it is no slower (faster on a CPU here).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch import nn

DEFAULT_BUDGET_BYTES = 128 * 2**20


class LeanAttention(Attention):
    """Drop-in for ``segment_anything``'s ``Attention``: same parameters, chunked over heads."""

    budget_bytes: int = DEFAULT_BUDGET_BYTES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        n = H * W
        qkv = self.qkv(x).reshape(B, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, B * self.num_heads, n, -1).unbind(0)
        if self.use_rel_pos:
            Rh = get_rel_pos(H, H, self.rel_pos_h)
            Rw = get_rel_pos(W, W, self.rel_pos_w)
        step = max(1, self.budget_bytes // (n * n * q.element_size()))
        out = torch.empty_like(q)
        for s in range(0, q.shape[0], step):
            qc = q[s:s + step]
            attn = (qc * self.scale) @ k[s:s + step].transpose(-2, -1)
            if self.use_rel_pos:
                r_q = qc.reshape(-1, H, W, qc.shape[-1])
                view = attn.view(-1, H, W, H, W)
                view.add_(torch.einsum("bhwc,hkc->bhwk", r_q, Rh)[:, :, :, :, None])
                view.add_(torch.einsum("bhwc,wkc->bhwk", r_q, Rw)[:, :, :, None, :])
            out[s:s + step] = attn.softmax(dim=-1) @ v[s:s + step]
            del attn
        x = out.view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(x)


def lean_sam_attention(sam: nn.Module, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> nn.Module:
    """Switch every attention block of a SAM image encoder to ``LeanAttention`` in place (weights kept)."""
    for module in sam.modules():
        if type(module) is Attention:
            module.__class__ = LeanAttention
        if isinstance(module, LeanAttention):
            module.budget_bytes = budget_bytes
    return sam


@contextmanager
def stock_attention(sam: nn.Module) -> Iterator[nn.Module]:
    """SAM with its original attention for the duration (the bench's reference for stock SAM speed)."""
    switched = [m for m in sam.modules() if type(m) is LeanAttention]
    for module in switched:
        module.__class__ = Attention
    try:
        yield sam
    finally:
        for module in switched:
            module.__class__ = LeanAttention
