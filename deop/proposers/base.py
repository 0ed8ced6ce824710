"""What every proposal model shares: its spec, the masks it returns, and the rule that makes them disjoint.

A proposal model is a ``ProposerSpec`` (a name, a title, its weights, its family's build parameters) whose
``ProposerFamily`` knows how to build, resize and run that kind of network. Everything outside this
package asks the spec; nothing else knows which family runs.

SAM's automatic generators return overlapping masks (a shirt inside a person inside a crowd). A label map
needs each pixel in at most one segment, so overlaps are resolved by one documented rule: masks are
painted from the largest to the smallest, so a smaller mask wins the pixels it shares with a larger one
(objects stay visible on top of the regions around them, as in the official DeOP demo). A mask left
with no pixel is dropped. The result is a segment-id map, far smaller than a stack of boolean masks.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import MissingPackageError, OptionError

if TYPE_CHECKING:
    from torch import nn

    from ..config import ProposalConfig
    from ..timing import Deadline
    from ..weights import Checkpoint, HubCheckpoint


@dataclass
class MaskSet:
    """Masks of one image in the generator's order, each kept as its tight box and the crop inside it
    (a few hundred full-image masks of a 1024 px photo would hold hundreds of megabytes). Coordinates are
    in the input image's pixels.

    boxes: (N, 4) x0, y0, x1, y1 with inclusive ends, the stock generators' values; an empty mask has a
        (0, 0) crop and stock's box for it ((0, 0, 0, 0) shifted by the offset of the image crop it came from).
    The two ``record_float_*`` flags say whether stock's records carry those boxes as floats: SAM 2's
    always do (its ``MaskData.to_numpy`` casts to float); SAM v1's do when torch's type promotion turned
    them float, which happens when some batch of point prompts kept no mask or, for ``crop_boxes``, some
    image crop kept none. They only matter to ``to_records``, for comparisons with stock.
    """

    image_size: tuple[int, int]
    boxes: np.ndarray
    crops: list[np.ndarray]
    predicted_iou: np.ndarray
    stability_score: np.ndarray
    point_coords: np.ndarray
    crop_boxes: np.ndarray
    areas: np.ndarray
    record_float_boxes: bool = False
    record_float_crop_boxes: bool = False
    network_seconds: float = 0.0  # of the generation that made them: the image encoder and mask decoder
    prompter: Any = field(default=None, repr=False, compare=False)  # the predictor holding the image's embedding
    queries: Any = field(default=None, repr=False, compare=False)  # a query-based generator's QueryMasks (None: SAM)

    def __len__(self) -> int:
        return len(self.crops)

    def full_mask(self, i: int) -> np.ndarray:
        mask = np.zeros(self.image_size, dtype=bool)
        crop = self.crops[i]
        if crop.size:
            x0, y0 = int(self.boxes[i, 0]), int(self.boxes[i, 1])
            mask[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
        return mask

    def select(self, index: np.ndarray | Sequence[int]) -> MaskSet:
        index = np.asarray(index, dtype=np.int64)
        return MaskSet(self.image_size, self.boxes[index], [self.crops[i] for i in index], self.predicted_iou[index],
                       self.stability_score[index], self.point_coords[index], self.crop_boxes[index],
                       self.areas[index], self.record_float_boxes, self.record_float_crop_boxes,
                       queries=self.queries)

    def to_records(self) -> list[dict[str, Any]]:
        """The stock generators' ``generate()`` output in binary_mask mode, same values and Python types."""
        xywh = self.boxes.copy()
        xywh[:, 2:] -= xywh[:, :2]
        crop_xywh = self.crop_boxes.copy()
        crop_xywh[:, 2:] -= crop_xywh[:, :2]
        bboxes = (xywh.astype(np.float32) if self.record_float_boxes else xywh).tolist()
        crop_boxes = (crop_xywh.astype(np.float32) if self.record_float_crop_boxes else crop_xywh).tolist()
        ious, stabilities = self.predicted_iou.tolist(), self.stability_score.tolist()
        points = self.point_coords.tolist()
        return [{"segmentation": self.full_mask(i), "area": int(self.areas[i]), "bbox": bboxes[i],
                 "predicted_iou": ious[i], "point_coords": [points[i]], "stability_score": stabilities[i],
                 "crop_box": crop_boxes[i]} for i in range(len(self))]

    @classmethod
    def from_masks(cls, masks: Sequence[np.ndarray] | np.ndarray, scores: np.ndarray | None = None,
                   shape: tuple[int, int] | None = None) -> MaskSet:
        """Full-image boolean masks (as the stock generators and tests give them) in this form."""
        masks = [np.asarray(m, dtype=bool) for m in masks]
        if shape is None:
            if not masks:
                raise ValueError("a mask set needs an image size when there are no masks")
            shape = masks[0].shape
        boxes, crops = np.zeros((len(masks), 4), dtype=np.int64), []
        for i, m in enumerate(masks):
            rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
            if len(rows):
                boxes[i] = (cols[0], rows[0], cols[-1], rows[-1])
                crops.append(m[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1])
            else:
                crops.append(np.zeros((0, 0), dtype=bool))
        n = len(masks)
        score = np.zeros(n, dtype=np.float32) if scores is None else np.asarray(scores, dtype=np.float32)
        return cls(tuple(shape), boxes, crops, score, np.zeros(n, dtype=np.float32), np.zeros((n, 2)),
                   np.zeros((n, 4), dtype=np.int64), np.array([int(c.sum()) for c in crops], dtype=np.int64))


@dataclass
class Proposals:
    """Disjoint segments of one image.

    segment_map: (H, W) int32, -1 where no segment, else the segment index.
    scores: (N,) the model's predicted IoU of each segment.
    boxes: (N, 4) int x0, y0, x1, y1 (exclusive ends) of each segment.
    areas: (N,) pixel count of each segment.
    raw_count: masks the model returned before the limit and the overlap resolution.
    prompter: the model's predictor still holding this image's embedding, so that a point prompt (a click
        that adds a segment) decodes a mask without encoding the image again; None for a model without
        point prompts (DeOP's trained generator).
    queries: a query-based generator's raw output (``deop.trained.generator.QueryMasks``: every query's
        mask logits), which the trained classifier reads; None for SAM's families.
    source: (N,) int64, each segment's index in the mask list the model returned (its query, for DeOP's
        trained generator): the overlap rule reorders by area and drops emptied masks, ``max_masks``
        keeps the best, so segment j is not mask j.
    """

    segment_map: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray
    raw_count: int
    prompter: Any = field(default=None, repr=False, compare=False)
    queries: Any = field(default=None, repr=False, compare=False)
    source: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.scores)

    def mask(self, index: int) -> np.ndarray:
        return self.segment_map == index


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


def resolve_overlaps(masks: MaskSet | Sequence[np.ndarray] | np.ndarray, scores: np.ndarray | None = None,
                     shape: tuple[int, int] | None = None) -> Proposals:
    """Paint masks largest first so smaller ones win shared pixels; drop masks that end up empty.

    Segments are numbered in paint order (largest first). Their union equals the union of the input.
    Scores default to the mask set's predicted IoU. ``source`` holds each segment's index in the input.
    """
    if not isinstance(masks, MaskSet):
        masks = MaskSet.from_masks(masks, scores, shape)
    elif scores is not None:
        masks.predicted_iou = np.asarray(scores, dtype=np.float32)
    order = np.argsort(-masks.areas, kind="stable")
    painted = np.full(masks.image_size, -1, dtype=np.int32)
    for rank, idx in enumerate(order):
        crop = masks.crops[idx]
        if crop.size:
            x0, y0 = int(masks.boxes[idx][0]), int(masks.boxes[idx][1])
            painted[y0: y0 + crop.shape[0], x0: x0 + crop.shape[1]][crop] = rank
    present = np.unique(painted[painted >= 0])
    remap = np.full(len(masks) + 1, -1, dtype=np.int32)
    remap[present] = np.arange(len(present), dtype=np.int32)
    segment_map = remap[painted]  # painted == -1 indexes the last slot, which stays -1
    boxes, seg_areas = segment_boxes(segment_map, len(present))
    return Proposals(segment_map, masks.predicted_iou[order][present], boxes, seg_areas, raw_count=len(masks),
                     source=order[present].astype(np.int64))


def best_index(masks: MaskSet, limit: int) -> np.ndarray:
    """The indices of at most `limit` masks (0: all), those with the highest predicted IoU, best first; ties
    keep the earlier mask."""
    if not limit or len(masks) <= limit:
        return np.arange(len(masks), dtype=np.int64)
    return np.array(sorted(range(len(masks)), key=lambda i: -masks.predicted_iou[i])[:limit], dtype=np.int64)


def keep_best(masks: MaskSet, limit: int) -> MaskSet:
    """At most `limit` masks (0: all), those with the highest predicted IoU; ties keep the earlier mask."""
    if not limit or len(masks) <= limit:
        return masks
    return masks.select(best_index(masks, limit))


class ProposerFamily:
    """How one kind of network is built, resized and run; subclassed once per family (sam.py, sam2.py, ...).

    package: the import name of the PyPI package that holds the family's official code.
    """

    name: str = ""
    package: str = ""
    install_hint: str = ""
    point_prompts: bool = True  # a click (point prompt) can add a segment on the kept embedding

    def available(self) -> bool:
        return importlib.util.find_spec(self.package) is not None

    def require(self) -> None:
        if not self.available():
            raise MissingPackageError(self.install_hint)

    def build(self, spec: ProposerSpec, random_weights: bool, checkpoint_dir: Path | None,
              download: bool) -> nn.Module:
        """The network on the CPU, in eval mode, with its weights (or the seeded random ones)."""
        raise NotImplementedError

    def input_size(self, model: nn.Module) -> int:
        raise NotImplementedError

    def at_input_size(self, model: nn.Module, size: int) -> nn.Module:
        """The same network (weights shared) run at a `size` x `size` input."""
        raise NotImplementedError

    def generate(self, model: nn.Module, image: np.ndarray, config: ProposalConfig,
                 deadline: Deadline | None = None) -> MaskSet:
        """Our automatic mask generator: exactly the stock generator's masks at equal settings."""
        raise NotImplementedError

    def stock_generator(self, model: nn.Module, config: ProposalConfig) -> Any:
        """The family's own automatic mask generator at these settings (``.generate(image)`` gives its list
        of dicts), for the tests' and the bench's comparisons."""
        raise NotImplementedError

    def weights_readme(self, spec: ProposerSpec) -> str | None:
        """A section of ``checkpoints/README.md`` for weights that are not a ``Checkpoint`` entry (no published
        checksum to pin), or None."""
        return None

    def stock_model(self, model: nn.Module) -> Any:
        """A context manager giving the model as its package ships it (the bench's stock reference)."""
        from contextlib import nullcontext

        return nullcontext(model)


@dataclass(frozen=True)
class ProposerSpec:
    """One proposal model: a registry entry (``deop.proposers.PROPOSERS``).

    arch: the family's build parameters. weights: where its checkpoint comes from (None: random weights
    only, for tests). in_app: offered in the app's Proposal model menu when its package is installed.
    fixed_input_size: the only encoder input the network runs at (MobileSAM's TinyViT), or None.
    """

    name: str
    title: str
    family: ProposerFamily
    arch: Mapping[str, Any] = field(default_factory=dict)
    weights: Checkpoint | HubCheckpoint | None = None
    in_app: bool = False
    fixed_input_size: int | None = None
    description: str = ""

    def available(self) -> bool:
        return self.family.available()

    def input_size_for(self, requested: int) -> int:
        """The encoder input this model runs at for a requested ``sam_input_size``."""
        return self.fixed_input_size or requested

    def check_random_only(self, random_weights: bool) -> None:
        if self.weights is None and not random_weights:
            raise OptionError(f"proposal model {self.name!r} exists only with random weights (for tests)")


@dataclass
class Proposer:
    """A loaded proposal model at one encoder input size: what the pipeline calls."""

    spec: ProposerSpec
    model: Any
    precision: str = "float32"  # what it runs at (``deop.precision``); the weights stay as built

    def autocast(self) -> Any:
        from contextlib import nullcontext

        from ..precision import autocast

        if self.precision == "float32":  # the exact reference: nothing to set up, whatever the model holds
            return nullcontext()
        return autocast(next(self.model.parameters()).device, self.precision)

    @property
    def input_size(self) -> int:
        return self.spec.family.input_size(self.model)

    def masks(self, image: np.ndarray, config: ProposalConfig, deadline: Deadline | None = None) -> MaskSet:
        import torch

        with torch.inference_mode(), self.autocast():
            return self.spec.family.generate(self.model, image, config, deadline)

    def propose(self, image: np.ndarray, config: ProposalConfig, deadline: Deadline | None = None) -> Proposals:
        """The model's masks for an RGB uint8 image, limited to ``config.max_masks`` by predicted IoU, made
        disjoint; ``source`` maps each segment back to the model's mask list."""
        masks = self.masks(image, config, deadline)
        kept = best_index(masks, config.max_masks)
        proposals = resolve_overlaps(masks if len(kept) == len(masks) else masks.select(kept))
        proposals.raw_count = len(masks)
        proposals.prompter = masks.prompter
        proposals.queries = masks.queries
        proposals.source = kept[proposals.source]
        return proposals

    def point_mask(self, proposals: Proposals, points: Sequence[tuple[float, float, bool]],
                   mask_input: np.ndarray | None = None) -> tuple[np.ndarray, float, np.ndarray]:
        """The mask SAM's decoder gives for point prompts (x, y in the image's pixels, True for a positive
        point) on the embedding kept with `proposals`: the best of its three masks for one point, its single
        mask for several (with the previous low-resolution logits as `mask_input`, as SAM's interactive
        tools refine). Returns the (H, W) mask, its predicted IoU and its low-resolution logits."""
        if not self.spec.family.point_prompts:
            raise OptionError(f"{self.spec.title} takes no point prompts, so a click cannot add a segment: it "
                              "has no prompt encoder (choose a SAM model to add segments by clicking)")
        if proposals.prompter is None:
            raise ValueError("these proposals were made without keeping the image embedding")
        import torch

        coords = np.array([[x, y] for x, y, _ in points], dtype=np.float32)
        labels = np.array([1 if positive else 0 for *_, positive in points], dtype=np.int32)
        with torch.inference_mode(), self.autocast():
            masks, scores, logits = proposals.prompter.predict(
                point_coords=coords, point_labels=labels, mask_input=mask_input, multimask_output=len(points) == 1)
        best = int(np.argmax(scores))
        return np.asarray(masks[best], dtype=bool), float(scores[best]), logits[best][None]

    def stock_generator(self, config: ProposalConfig) -> Any:
        return self.spec.family.stock_generator(self.model, config)


def with_modules(module: Any, **children: Any) -> Any:
    """A shallow copy of `module` with some child modules replaced; the others, and every weight, shared."""
    import copy

    out = copy.copy(module)
    out._modules = {**module._modules, **children}
    return out


def prompt_encoder_at(prompt: Any, size: int, grid: int) -> Any:
    """A copy of a SAM-family prompt encoder (SAM, SAM 2 and MobileSAM keep these three sizes) for a
    `size` px input whose embedding is `grid` x `grid`; the weights are shared."""
    import copy

    prompt = copy.copy(prompt)
    prompt.image_embedding_size = (grid, grid)
    prompt.input_image_size = (size, size)
    prompt.mask_input_size = (4 * grid, 4 * grid)
    return prompt
