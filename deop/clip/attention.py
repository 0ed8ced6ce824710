"""CLIP's self-attention on a CPU under bfloat16 autocast, in blocks that gain what bfloat16 gains.

PyTorch's CPU attention kernel (``scaled_dot_product_attention``, flash-style) is no faster in bfloat16
than in float32 on this project's processor (AVX-512 BF16, no AMX): [12, 784, 64] 12.2 against 11 ms,
4096 tokens 315 against 292 ms. The linear layers around it are 3x faster in bfloat16, so under autocast
attention grows from a third of CLIP's dense pass at 448 px to three quarters at 1024 px, while a 224 px
crop (197 tokens) is mostly linear layers: bfloat16 sped the crop baseline up more than the one pass.

The same attention as two bfloat16 batched matrix products with a softmax between them, over blocks of
query rows small enough to stay in cache, runs on the processor's bfloat16 dot-product instructions:
5.8 ms at 784 tokens, 122 ms at 4096, and 12 instead of 26 ms for 25 crops' worth of 197 tokens (2.1-2.6x,
median of 7). It is the same computation (scaled scores, softmax, weighted sum), but its scores and
probabilities are rounded to bfloat16 (PyTorch's CPU matrix product has no float32 output for bfloat16
inputs; computing the scores in float32 instead was slower than the stock kernel), where the stock kernel
keeps them in float32: on synthetic attention its error against float32 is about twice the stock bfloat16
kernel's (relative 1.2 against 0.6 % with logits of standard deviation 4), and CLIP's dense features stay
within a per-patch cosine of 0.9999 of float32 on random weights (not measurable here with real ones;
``--precision float32`` is the exact reference). It serves every CLIP forward pass alike, the crops'
included, so the comparison of the two methods stays fair.

Only unmasked self-attention under CPU bfloat16 autocast takes this path (the image tower, and a text
tower built without its causal mask); anything else is ``nn.MultiheadAttention``'s own forward, and
float32 is stock's computation untouched.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..casts import autocast_weight

__all__ = ["BLOCK_SCORES", "CpuAutocastAttention", "blocked_attention", "fast_cpu_attention"]

# attention scores per block: 2M (4 MB in bfloat16) measured fastest here from 197 to 4097 tokens (1M-4M within 10 %)
BLOCK_SCORES = 1 << 21


def blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      block_scores: int = BLOCK_SCORES) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for q [G, N, D], k [G, M, D], v [G, M, E] (G = batch x heads), a block of
    query rows (or of whole groups, when one group's scores fit) at a time, so each block's scores stay in
    cache."""
    groups, n, d = q.shape
    q = q * d**-0.5
    kt = k.transpose(1, 2)
    out = q.new_empty(groups, n, v.shape[-1])
    rows = max(1, min(n, block_scores // k.shape[1]))
    per_block = max(1, block_scores // (n * k.shape[1])) if rows == n else 1
    for g in range(0, groups, per_block):
        for r in range(0, n, rows):
            scores = torch.bmm(q[g:g + per_block, r:r + rows], kt[g:g + per_block])
            out[g:g + per_block, r:r + rows] = torch.bmm(torch.softmax(scores, dim=-1), v[g:g + per_block])
    return out


# what nn.MultiheadAttention.forward takes by name: anything else goes to it, which raises as stock does
_KEYWORDS = {"key_padding_mask", "need_weights", "attn_mask", "average_attn_weights", "is_causal"}


def _cpu_autocast(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and torch.is_autocast_enabled("cpu")


def _seq_first_contiguous(t: Any) -> Any:
    """The same values laid out so that ``t.transpose(0, 1)`` is contiguous."""
    return t.transpose(0, 1).contiguous().transpose(0, 1) if torch.is_tensor(t) and t.dim() == 3 else t


class CpuAutocastAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` (batch-first) whose self-attention under CPU bfloat16 autocast runs
    ``blocked_attention``; the class of an existing module is swapped to it (``fast_cpu_attention``), so
    its weights, names and state dict stay stock's."""

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any,
                **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not _cpu_autocast(query):
            return super().forward(query, key, value, *args, **kwargs)  # float32: stock's computation
        if self._blocked_applies(query, key, value, args, kwargs):
            return self._blocked(query), None
        # A batch-first module transposes its input to a non-contiguous [L, N, E] view before its input
        # projection, and torch 2.14's CPU bfloat16 linear on that view expands the weight once per sequence
        # position (a 197 x 768 x 2304 copy per block: 22 crops took 6.3 s instead of 1.6 s). The same
        # values laid out so that the transpose is contiguous avoid it.
        same_kv, same_qk = value is key, key is query
        query = _seq_first_contiguous(query)
        key = query if same_qk else _seq_first_contiguous(key)  # one tensor stays one: a packed projection
        value = key if same_kv else _seq_first_contiguous(value)
        return super().forward(query, key, value, *args, **kwargs)

    def _blocked_applies(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, args: tuple,
                         kwargs: dict) -> bool:
        masks = ("key_padding_mask", "attn_mask")
        return (torch.get_autocast_dtype("cpu") == torch.bfloat16 and not args and kwargs.keys() <= _KEYWORDS
                and query is key is value
                and query.dim() == 3 and self.batch_first
                and self._qkv_same_embed_dim and self.bias_k is None and not self.add_zero_attn
                and not (self.training and self.dropout) and not kwargs.get("is_causal", False)
                and all(kwargs.get(m) is None for m in masks) and not kwargs.get("need_weights", True))

    def _blocked(self, x: torch.Tensor) -> torch.Tensor:
        b, n, e = x.shape
        h, d = self.num_heads, e // self.num_heads
        qkv = nn.functional.linear(x, autocast_weight(self, "in_proj_weight"), self.in_proj_bias)  # bfloat16
        q, k, v = qkv.view(b, n, 3, h, d).permute(2, 0, 3, 1, 4).contiguous().view(3, b * h, n, d).unbind(0)
        with torch.autocast("cpu", enabled=False):  # bfloat16 in and out, by hand
            out = blocked_attention(q, k, v)
        out = out.view(b, h, n, d).transpose(1, 2).reshape(b, n, e)
        return self.out_proj(out)


def fast_cpu_attention(model: nn.Module) -> int:
    """Swaps every batch-first ``nn.MultiheadAttention`` of `model` to ``CpuAutocastAttention``; returns
    how many."""
    modules = [m for m in model.modules() if type(m) is nn.MultiheadAttention and m.batch_first]
    for m in modules:
        m.__class__ = CpuAutocastAttention
    return len(modules)
