"""Class-agnostic mask proposals from Segment Anything (or SAM 2.1), made disjoint.

SAM's automatic generator returns overlapping masks (a shirt inside a person inside a crowd). A label map
needs each pixel in at most one segment, so overlaps are resolved by one documented rule: masks are
painted from the largest to the smallest, so a smaller mask wins the pixels it shares with a larger one
(objects stay visible on top of the regions around them, as in the official DeOP demo). A mask left
with no pixel is dropped. The result is a segment-id map, far smaller than a stack of boolean masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.transforms import ResizeLongestSide
from torch import nn

from .config import ProposalConfig
from .sam2_backend import is_sam2, sam2_generator
from .timing import Deadline, DeadlineBatches


@dataclass
class Proposals:
    """Disjoint segments of one image.

    segment_map: (H, W) int32, -1 where no segment, else the segment index.
    scores: (N,) SAM's predicted IoU of each segment.
    boxes: (N, 4) int x0, y0, x1, y1 (exclusive ends) of each segment.
    areas: (N,) pixel count of each segment.
    raw_count: masks SAM returned before the limit and the overlap resolution.
    """

    segment_map: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray
    raw_count: int

    def __len__(self) -> int:
        return len(self.scores)

    def mask(self, index: int) -> np.ndarray:
        return self.segment_map == index


class Float32Coords(ResizeLongestSide):
    """SAM's resize transform with float32 point coordinates.

    SAM's automatic generator sends its float64 point grid to the model's device as it is, and Apple's
    MPS has no float64, so on a Mac every request failed ("Cannot convert a MPS Tensor to float64
    dtype", segment-anything issue #94, open). The prompt encoder casts the points to float32 anyway;
    only the ``+ 0.5`` and the scaling before that cast change rounding, so it is used on MPS alone and
    the masks elsewhere stay exactly the stock generator's."""

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        return super().apply_coords(coords, original_size).astype(np.float32)


class _CheckedGenerator(DeadlineBatches, SamAutomaticMaskGenerator):
    """SAM's own generator, checking a deadline before each batch of point prompts (outputs unchanged),
    with float32 points on MPS (see ``Float32Coords``)."""

    def __init__(self, *args, deadline: Deadline | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline or Deadline(None)
        if self.predictor.device.type == "mps":
            self.predictor.transform = Float32Coords(self.predictor.transform.target_length)


def sam_generator(sam: nn.Module, config: ProposalConfig, deadline: Deadline | None = None):
    """The stock automatic generator of SAM (or SAM 2.1) with our settings: proposals equal the stock
    generator's at equal options."""
    if is_sam2(sam):
        return sam2_generator(sam, config, deadline)
    return _CheckedGenerator(sam, output_mode="binary_mask", deadline=deadline, **config.generator_kwargs())


def segment_boxes(segment_map: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (x0, y0, x1, y1; exclusive ends) and areas of segments 0..n-1 in one pass over the map."""
    h, w = segment_map.shape
    ys, xs = np.nonzero(segment_map >= 0)
    ids = segment_map[ys, xs]
    areas = np.bincount(ids, minlength=n).astype(np.int64)
    boxes = np.zeros((n, 4), dtype=np.int64)
    if n and len(ids):
        x0 = np.full(n, w, dtype=np.int64)
        y0 = np.full(n, h, dtype=np.int64)
        x1 = np.zeros(n, dtype=np.int64)
        y1 = np.zeros(n, dtype=np.int64)
        np.minimum.at(x0, ids, xs)
        np.minimum.at(y0, ids, ys)
        np.maximum.at(x1, ids, xs + 1)
        np.maximum.at(y1, ids, ys + 1)
        boxes = np.stack([x0, y0, x1, y1], axis=1)
    return boxes, areas


def resolve_overlaps(masks: list[np.ndarray] | np.ndarray, scores: np.ndarray | None = None,
                     shape: tuple[int, int] | None = None) -> Proposals:
    """Paint masks largest first so smaller ones win shared pixels; drop masks that end up empty.

    Segments are numbered in paint order (largest first). Their union equals the union of the input.
    """
    masks = list(masks)
    if shape is None:
        if not masks:
            raise ValueError("resolve_overlaps needs a shape when there are no masks")
        shape = masks[0].shape
    scores = np.zeros(len(masks), dtype=np.float32) if scores is None else np.asarray(scores, dtype=np.float32)
    areas = np.array([int(m.sum()) for m in masks], dtype=np.int64)
    order = np.argsort(-areas, kind="stable")
    painted = np.full(shape, -1, dtype=np.int32)
    for rank, idx in enumerate(order):
        painted[masks[idx]] = rank
    present = np.unique(painted[painted >= 0])
    remap = np.full(len(masks) + 1, -1, dtype=np.int32)
    remap[present] = np.arange(len(present), dtype=np.int32)
    segment_map = remap[painted]  # painted == -1 indexes the last slot, which stays -1
    boxes, seg_areas = segment_boxes(segment_map, len(present))
    return Proposals(segment_map, scores[order][present], boxes, seg_areas, raw_count=len(masks))


def generate_proposals(sam: nn.Module, image: np.ndarray, config: ProposalConfig,
                       deadline: Deadline | None = None) -> Proposals:
    """SAM's (or SAM 2.1's) masks for an RGB uint8 image, limited to ``config.max_masks`` by predicted IoU,
    made disjoint."""
    with torch.inference_mode():
        records = sam_generator(sam, config, deadline).generate(image)
    raw = len(records)
    if config.max_masks and len(records) > config.max_masks:
        records = sorted(records, key=lambda r: -r["predicted_iou"])[: config.max_masks]
    proposals = resolve_overlaps([r["segmentation"] for r in records],
                                 np.array([r["predicted_iou"] for r in records]), image.shape[:2])
    proposals.raw_count = raw
    return proposals
