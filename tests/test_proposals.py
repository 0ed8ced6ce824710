"""Proposals: the stock generator's masks, then a disjoint cover of their union."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator

from conftest import SMALL_PROPOSALS, scene
from deop.config import ProposalConfig
from deop.errors import OptionError
from deop.proposers import resolve_overlaps, segment_boxes
from deop.proposers.sam import SAM


@pytest.fixture(scope="module")
def stock_masks(tiny_sam):
    image = scene()
    stock = SamAutomaticMaskGenerator(tiny_sam, points_per_side=4, pred_iou_thresh=0.0,
                                      stability_score_thresh=0.0, min_mask_region_area=0)
    return image, stock.generate(image)


def test_generator_equals_stock_sam(proposer, stock_masks):
    image, stock = stock_masks
    ours = proposer.masks(image, SMALL_PROPOSALS).to_records()
    assert len(stock) > 0 and len(ours) == len(stock)
    for a, b in zip(ours, stock):
        np.testing.assert_array_equal(a["segmentation"], b["segmentation"])
        assert a["predicted_iou"] == b["predicted_iou"]


def _point_dtypes(monkeypatch) -> list[torch.dtype]:
    """Record the dtype of the points each batch sends to SAM's prompt encoder."""
    from segment_anything.modeling.prompt_encoder import PromptEncoder

    seen, forward = [], PromptEncoder.forward

    def spy(self, points, *args, **kwargs):
        seen.append(points[0].dtype)
        return forward(self, points, *args, **kwargs)

    monkeypatch.setattr(PromptEncoder, "forward", spy)
    return seen


def test_on_mps_the_points_go_to_sam_as_float32(proposer, stock_masks, monkeypatch):
    """MPS has no float64 and SAM's stock generator sends float64 points (segment-anything #94). No Mac
    here: the choice is checked for an MPS device, and the float32 path runs on the CPU, where it must give
    the stock generator's masks; elsewhere the points stay float64, as stock sends them."""
    from deop.proposers.sam import needs_float32_points

    assert needs_float32_points(torch.device("mps")) and not needs_float32_points(torch.device("cpu"))
    assert not needs_float32_points(torch.device("cuda"))
    image, stock = stock_masks
    plain_dtypes = _point_dtypes(monkeypatch)
    proposer.masks(image, SMALL_PROPOSALS)
    assert set(plain_dtypes) == {torch.float64}  # what MPS refuses
    monkeypatch.undo()
    dtypes = _point_dtypes(monkeypatch)
    with torch.inference_mode():
        ours = SAM.generate(proposer.model, image, SMALL_PROPOSALS, float32_points=True).to_records()
    assert dtypes and set(dtypes) == {torch.float32}
    assert len(ours) == len(stock)
    for a, b in zip(ours, stock):  # float32 rounding may at most move a pixel on a mask's edge
        assert (a["segmentation"] != b["segmentation"]).mean() < 1e-3


def test_resolved_proposals_are_disjoint_and_cover_the_union(proposer, stock_masks):
    image, stock = stock_masks
    props = proposer.propose(image, SMALL_PROPOSALS)
    union = np.any([r["segmentation"] for r in stock], axis=0)
    np.testing.assert_array_equal(props.segment_map >= 0, union)
    # one id per pixel makes the segments disjoint; every id is present and the areas add up
    assert set(np.unique(props.segment_map[props.segment_map >= 0])) == set(range(len(props)))
    assert props.areas.sum() == union.sum()
    assert props.raw_count == len(stock)


def test_smaller_masks_win_shared_pixels():
    big = np.zeros((10, 10), bool)
    big[:, :] = True
    small = np.zeros((10, 10), bool)
    small[2:4, 2:4] = True
    hidden = np.zeros((10, 10), bool)
    hidden[2:3, 2:3] = True  # inside `small`, smaller still: wins its pixel
    props = resolve_overlaps([small, big, hidden], np.array([0.5, 0.9, 0.1]))
    assert len(props) == 3
    assert props.segment_map[2, 2] == 2 and props.segment_map[3, 3] == 1 and props.segment_map[0, 0] == 0
    assert props.scores.tolist() == pytest.approx([0.9, 0.5, 0.1])
    assert props.areas.tolist() == [96, 3, 1]


def test_fully_covered_masks_are_dropped():
    a = np.zeros((6, 6), bool)
    a[:3] = True
    b = np.zeros((6, 6), bool)
    b[3:] = True
    covering = a | b  # largest, painted first, then fully overwritten by a and b
    props = resolve_overlaps([covering, a, b])
    assert len(props) == 2 and props.raw_count == 3


def test_no_masks_gives_an_empty_map():
    props = resolve_overlaps([], shape=(4, 5))
    assert len(props) == 0 and (props.segment_map == -1).all()


def test_boxes_are_exclusive_and_tight():
    seg = np.full((8, 9), -1, np.int32)
    seg[2:5, 3:7] = 0
    seg[7, 8] = 1
    boxes, areas = segment_boxes(seg, 2)
    assert boxes.tolist() == [[3, 2, 7, 5], [8, 7, 9, 8]]
    assert areas.tolist() == [12, 1]


def test_max_masks_keeps_the_best_predicted(proposer):
    image = scene()
    many = proposer.propose(image, SMALL_PROPOSALS)
    few = proposer.propose(image, ProposalConfig(**{**SMALL_PROPOSALS.__dict__, "max_masks": 2}))
    assert few.raw_count == many.raw_count
    assert len(few) <= 2


def test_bad_settings_are_rejected():
    with pytest.raises(OptionError, match="points_per_side must be at least 1, got 0"):
        ProposalConfig(points_per_side=0)
    with pytest.raises(OptionError, match="pred_iou_thresh must be between 0 and 1, got 1.5"):
        ProposalConfig(pred_iou_thresh=1.5)
    with pytest.raises(OptionError, match="points_per_side must be a whole number, got 10.7"):
        ProposalConfig(points_per_side=10.7)
    with pytest.raises(OptionError, match="sam_input_size must be a multiple of 16"):
        ProposalConfig(sam_input_size=500)


def test_sam_at_a_smaller_input_shares_weights_and_leaves_the_original(segmenter):
    full = segmenter.proposer_at(1024).model
    small_proposer = segmenter.proposer_at(512)
    small = small_proposer.model
    assert small is segmenter.proposer_at(512).model  # cached once
    assert full.image_encoder.img_size == 1024 and full.image_encoder.pos_embed.shape[1] == 64
    assert small.image_encoder.img_size == 512 and small.image_encoder.pos_embed.shape[1] == 32
    assert small.image_encoder.blocks[0] is full.image_encoder.blocks[0]
    assert small.mask_decoder is full.mask_decoder
    assert SAM.at_input_size(full, 1024) is full
    props = small_proposer.propose(scene(), SMALL_PROPOSALS)
    assert props.segment_map.shape == (120, 160) and len(props) > 0


def test_fast_preset_is_documented_and_smaller():
    from deop.config import PROPOSAL_PRESETS

    fast, demo = PROPOSAL_PRESETS["fast"], PROPOSAL_PRESETS["demo"]
    assert fast.points_per_side ** 2 < demo.points_per_side ** 2 and fast.sam_input_size < demo.sam_input_size
    assert "sam_input_size" not in fast.generator_kwargs()
