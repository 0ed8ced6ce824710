"""SAM's mask decoder without its unused work (``deop.proposers.lean_decoder``): the masks and scores of the
stock ``MaskDecoder``, bit for bit at float32, for exactly the masks the threshold keeps.

test_amg.py compares the whole generator with the stock ones in every regime (the lean decoder is what
runs there for SAM v1 and MobileSAM); here the decoder itself is compared with the stock module call on
the same prompts, at thresholds that keep every mask, some, or none, and one regime test_amg runs on a
patched decoder (a crop layer) runs on the plain one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amg_support import assert_same_records, with_small_masks
from deop.proposers.amg import FastMaskGenerator
from deop.proposers.lean_decoder import decode_points, is_stock_decoder


def _prompts(model: torch.nn.Module, n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A random image embedding and `n` point prompts encoded by the model's own prompt encoder."""
    g = torch.Generator().manual_seed(seed)
    pe = model.prompt_encoder
    h, w = pe.image_embedding_size
    embedding = torch.randn(1, pe.embed_dim, h, w, generator=g)
    size = pe.input_image_size
    points = torch.rand(n, 1, 2, generator=g) * torch.tensor([size[1], size[0]], dtype=torch.float32)
    sparse, dense = pe(points=(points, torch.ones(n, 1, dtype=torch.int)), boxes=None, masks=None)
    return embedding, pe.get_dense_pe(), sparse, dense


def _compare(model: torch.nn.Module, threshold: float | None, multimask: bool, n: int = 9) -> int:
    """Stock's decoder and the lean one on the same prompts; returns how many masks the threshold kept."""
    embedding, image_pe, sparse, dense = _prompts(model, n)
    with torch.inference_mode():
        stock_masks, stock_iou = model.mask_decoder(image_embeddings=embedding, image_pe=image_pe,
                                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                                    multimask_output=multimask)
        if threshold is None:  # a threshold between the model's own scores: some masks pass
            threshold = float(torch.quantile(stock_iou.flatten(), 0.6))
        iou, kept, masks = decode_points(model.mask_decoder, embedding, image_pe, sparse, dense, multimask,
                                         lambda s: s > threshold)
    assert torch.equal(iou, stock_iou)  # bit for bit: same scores
    assert torch.equal(kept, stock_iou > threshold)
    assert masks.shape[0] == int(kept.sum())
    assert torch.equal(masks, stock_masks[kept])  # the kept masks, bit for bit, in stock's order
    return int(kept.sum())


@pytest.fixture(scope="module", params=["sam", "sam-256", "mobile_sam"])
def model(request):
    return request.getfixturevalue({"sam": "amg_sam", "sam-256": "amg_sam_256",
                                    "mobile_sam": "amg_mobile_sam"}[request.param])


@pytest.mark.parametrize("multimask", [True, False])
def test_every_mask_passing_is_stocks(model, multimask):
    assert _compare(model, -1e9, multimask) == 9 * (3 if multimask else 1)


@pytest.mark.parametrize("multimask", [True, False])
def test_some_masks_passing_are_stocks(model, multimask):
    kept = _compare(model, None, multimask)
    assert 0 < kept < 9 * (3 if multimask else 1)


def test_no_mask_passing_makes_no_mask(model):
    assert _compare(model, 1e9, True) == 0


def test_a_single_prompt(model):
    embedding, image_pe, sparse, dense = _prompts(model, 1, seed=3)
    with torch.inference_mode():
        stock_masks, stock_iou = model.mask_decoder(image_embeddings=embedding, image_pe=image_pe,
                                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                                    multimask_output=True)
        iou, kept, masks = decode_points(model.mask_decoder, embedding, image_pe, sparse, dense, True,
                                         lambda s: s > s.min())
    assert torch.equal(iou, stock_iou) and torch.equal(masks, stock_masks[kept]) and int(kept.sum()) == 2


def test_the_generator_runs_it_for_sams_family_only(amg_sam, amg_sam_256, amg_mobile_sam):
    assert all(FastMaskGenerator(m, "sam").lean_decoder for m in (amg_sam, amg_sam_256, amg_mobile_sam))
    assert not FastMaskGenerator(amg_sam, "sam", lean=False).lean_decoder
    # a decoder whose instance has its own forward (the tests' small-mask variant) is called as it is
    assert not is_stock_decoder(with_small_masks(amg_sam).mask_decoder)
    assert not FastMaskGenerator(with_small_masks(amg_sam), "sam").lean_decoder


def test_the_crop_layer_regime_on_the_plain_decoder(amg_sam_256, image_b):
    """test_amg's crop-layer regime runs on a patched decoder (stock's call); here the lean one, against
    the lean=False generator (itself equal to stock's there), every crop's prompts decoded, at a threshold
    that keeps every mask and one that keeps some (a random SAM's sub-crop masks touch their crop's edge
    and are dropped after decoding)."""
    opts = {"points_per_side": 6, "points_per_batch": 6, "crop_n_layers": 1, "stability_score_thresh": 0.0,
            "stability_score_offset": 0.02, "box_nms_thresh": 1.0, "crop_nms_thresh": 1.0}
    ious = FastMaskGenerator(amg_sam_256, "sam", pred_iou_thresh=0.0, **opts).generate(image_b).predicted_iou
    for threshold in (0.0, float(np.quantile(ious, 0.5))):
        lean = FastMaskGenerator(amg_sam_256, "sam", pred_iou_thresh=threshold, **opts)
        plain = FastMaskGenerator(amg_sam_256, "sam", pred_iou_thresh=threshold, lean=False, **opts)
        assert lean.lean_decoder and not plain.lean_decoder
        expected, result = plain.generate(image_b).to_records(), lean.generate(image_b).to_records()
        assert len(expected) > 3
        assert_same_records(expected, result)
