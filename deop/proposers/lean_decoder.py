"""SAM's mask decoder for the automatic generator, without the work whose result is never used.

Profiled at the ``fast`` preset (SAM vit_b at 448 px: a 28 x 28 embedding, 100 point prompts in batches of
16, float32; see the README), the stock decoder spends about two thirds of its time in the two-way
transformer, an eighth upscaling every prompt's embedding 4x, and the rest repeating the image embedding
per prompt, in the prompt encoder, the hypernetwork MLPs and the IoU head. Stock computes, per prompt:

- the image embedding plus the "no mask" embedding and the dense positional encoding, copied once per
  prompt (``repeat_interleave``), although for point prompts without a mask input they are the same for
  every prompt;
- in the first transformer layer, three projections of those image tokens (the keys and values the
  prompt tokens attend to, and the queries with which the image attends back), again the same for
  every prompt;
- the upscaled embedding and the masks of every prompt, though the generator keeps only the masks whose
  predicted IoU passes its threshold: the IoU head reads the transformer's IoU token alone, so the
  scores are known before any mask is made;
- the hypernetwork MLP of the mask token whose mask is not returned (the single-mask token when three
  masks are asked for, as the generator does).

``decode_points`` computes the prompt-independent part once per batch, the transformer for every prompt
(everything after the first layer's image-to-token attention depends on the prompt, and the IoU token
depends on all of it), the hypernetwork MLPs of the returned masks' tokens only, and the upscaling and mask
products only for the prompts that have a mask passing the threshold. Every operation that remains is
stock's, on the same values and the same batch shapes where a kernel's rounding could depend on them (the
hypernetwork MLPs and the IoU head run over the whole batch, the products on all four token rows of a kept
prompt, the unused one zero), so the masks and scores are stock's, bit for bit at float32; the generator
tests compare them with the stock generators in every regime.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["decode_points", "is_stock_decoder"]


def is_stock_decoder(decoder: nn.Module) -> bool:
    """Whether `decoder` is segment_anything's (or MobileSAM's copy of its) ``MaskDecoder`` with its own
    two-way transformer, whose computation ``decode_points`` reproduces; anything else runs as it is."""
    def stock(module: nn.Module, name: str) -> bool:
        cls = type(module)
        return cls.__name__ == name and cls.__module__.split(".")[0] in ("segment_anything", "mobile_sam")

    transformer = getattr(decoder, "transformer", None)
    patched = {"forward", "predict_masks"} & set(vars(decoder))  # an instance's own forward is called as it is
    return (not patched and stock(decoder, "MaskDecoder") and transformer is not None
            and stock(transformer, "TwoWayTransformer")
            and all(stock(layer, "TwoWayAttentionBlock") for layer in transformer.layers))


def _attend(attn: nn.Module, q: Tensor, k: Tensor, v: Tensor, batch: int) -> Tensor:
    """Stock ``Attention.forward`` after its input projections; `q`, `k`, `v` already projected, any of them
    with a batch of 1 standing for `batch` identical rows (expanded, so the products see stock's shapes)."""
    q, k, v = (attn._separate_heads(t, attn.num_heads).expand(batch, -1, -1, -1) for t in (q, k, v))
    scores = q @ k.permute(0, 1, 3, 2)
    scores = scores / math.sqrt(q.shape[-1])
    out = torch.softmax(scores, dim=-1) @ v
    return attn.out_proj(attn._recombine_heads(out))


def _first_layer(layer: nn.Module, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor
                 ) -> tuple[Tensor, Tensor]:
    """Stock ``TwoWayAttentionBlock.forward`` with image tokens `keys` (batch 1) shared by every prompt: their
    projections are made once."""
    b = queries.shape[0]
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + layer.self_attn(q=q, k=q, v=queries)
    queries = layer.norm1(queries)
    cross = layer.cross_attn_token_to_image
    k_img = keys + key_pe
    out = _attend(cross, cross.q_proj(queries + query_pe), cross.k_proj(k_img), cross.v_proj(keys), b)
    queries = layer.norm2(queries + out)
    queries = layer.norm3(queries + layer.mlp(queries))
    back = layer.cross_attn_image_to_token
    q = queries + query_pe
    out = _attend(back, back.q_proj(k_img), back.k_proj(q), back.v_proj(queries), b)
    keys = layer.norm4(keys + out)
    return queries, keys


def _transformer(transformer: nn.Module, image: Tensor, image_pe: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Stock ``TwoWayTransformer.forward`` for one image embedding (batch 1) and a batch of prompts."""
    keys = image.flatten(2).permute(0, 2, 1)
    key_pe = image_pe.flatten(2).permute(0, 2, 1)
    queries = tokens
    for i, layer in enumerate(transformer.layers):
        if i == 0:
            queries, keys = _first_layer(layer, queries, keys, tokens, key_pe)
        else:
            queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=key_pe)
    attn_out = transformer.final_attn_token_to_image(q=queries + tokens, k=keys + key_pe, v=keys)
    return transformer.norm_final_attn(queries + attn_out), keys


def decode_points(decoder: nn.Module, image_embeddings: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor,
                  multimask_output: bool, keep: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Stock ``MaskDecoder.forward`` for point prompts without a mask input (`dense` the same "no mask"
    embedding for every prompt), producing only the masks that `keep` selects.

    keep: maps the (B, K) predicted IoUs of the output masks (K = 3 with `multimask_output`, else 1) to a
    boolean (B, K) selection. Returns every (B, K) predicted IoU, the selection, and the selected masks'
    (n, h, w) low-resolution logits in stock's order (prompt by prompt, mask by mask).
    """
    b = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(b, -1, -1), sparse), dim=1)
    src = image_embeddings + dense[:1]
    c, h, w = src.shape[1:]
    hs, keys = _transformer(decoder.transformer, src, image_pe, tokens)
    mask_slice = slice(1, None) if multimask_output else slice(0, 1)
    iou_pred = decoder.iou_prediction_head(hs[:, 0, :])[:, mask_slice]
    selected = keep(iou_pred)
    rows = selected.any(dim=1).nonzero().flatten()
    if len(rows) == 0:
        return iou_pred, selected, keys.new_zeros((0, 4 * h, 4 * w))
    n_tokens = decoder.num_mask_tokens
    mask_tokens = hs[:, 1:1 + n_tokens, :]
    used = range(n_tokens)[mask_slice]  # the unused tokens' MLPs are not run, their rows of the product are 0
    hyper_in = [decoder.output_hypernetworks_mlps[i](mask_tokens[:, i, :]) if i in used else None
                for i in range(n_tokens)]
    zero = torch.zeros_like(next(h for h in hyper_in if h is not None))
    hyper_in = torch.stack([zero if h is None else h for h in hyper_in], dim=1)[rows]
    upscaled = decoder.output_upscaling(keys[rows].transpose(1, 2).reshape(len(rows), c, h, w))
    k, uc, uh, uw = upscaled.shape
    masks = (hyper_in @ upscaled.view(k, uc, uh * uw)).view(k, -1, uh, uw)[:, mask_slice]
    return iou_pred, selected, masks[selected[rows]]
