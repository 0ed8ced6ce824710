"""SAM's automatic mask generation returning exactly the stock generators' masks, at close to network cost.

The stock ``SamAutomaticMaskGenerator`` (segment_anything, and MobileSAM's copy of it) and
``SAM2AutomaticMaskGenerator`` spend most of their time on bookkeeping once many masks pass their
filters: ``MaskData.cat`` deep-copies the accumulated RLE lists on every batch, every mask is run-length
encoded and decoded again, and the small-region cleanup decodes each mask and labels the whole image for
it. On a CPU they also pay for memory: each batch's masks are upscaled to the image size all at once, into
tensors so large that every batch maps and faults in fresh pages, and most of them are dropped next.

Here the prompt encoder and mask decoder compute exactly what the stock predictors compute, and the
per-mask scores, boxes and non-maximum suppression come from the very same stock helper functions or, on
a CPU, from the same integer counts, with tensors of the same device and dtype, so the scores, the order
and NMS tie-breaking are identical. Only the masks take another road: SAM v1's mask decoder makes only the
masks that pass the IoU threshold (``lean_decoder``), the threshold is applied before the model's own
upscaling, which then runs a few masks at a time; each surviving mask is kept bit-packed, cropped to its
tight box, and the small-region cleanup labels that box plus a one-pixel margin instead of the whole image.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torchvision.ops.boxes import batched_nms, box_area

from .base import MaskSet
from .lean_decoder import decode_points, is_stock_decoder

__all__ = ["FastMaskGenerator", "MaskSet", "remove_small_regions_cropped", "tight_crop"]

# Stock defaults that differ between the families (everything else is shared).
_PRED_IOU_THRESH = {"sam": 0.88, "sam2": 0.8}
_SAM2_OPTIONS = {"mask_threshold": 0.0, "use_m2m": False, "multimask_output": True}


@dataclass(frozen=True)
class _Packed:
    """A mask cropped to its tight box, 8 pixels a byte: 1200 masks of a 1024x768 image before NMS would
    otherwise be up to a gigabyte of booleans."""

    bits: np.ndarray
    width: int

    @classmethod
    def pack(cls, crop: np.ndarray) -> _Packed:
        return cls(np.packbits(crop, axis=-1), crop.shape[1])

    def unpack(self) -> np.ndarray:
        return np.unpackbits(self.bits, axis=-1, count=self.width).view(bool)


_EMPTY = _Packed(np.zeros((0, 0), dtype=np.uint8), 0)


@dataclass
class _Masks:
    """Stock's ``MaskData`` minus the RLEs: per-mask tensors exactly as stock holds them (same device and
    dtype, so that concatenation promotes types as stock's does), plus the packed crops."""

    boxes: torch.Tensor
    iou_preds: torch.Tensor
    points: torch.Tensor
    stability_score: torch.Tensor
    crop_boxes: torch.Tensor | None
    masks: list[_Packed]

    def __len__(self) -> int:
        return len(self.masks)

    def select(self, keep: torch.Tensor) -> _Masks:
        """Stock's ``MaskData.filter`` with an index tensor."""
        def take(v: torch.Tensor | None) -> torch.Tensor | None:
            return None if v is None else v[torch.as_tensor(keep, device=v.device)]

        return _Masks(take(self.boxes), take(self.iou_preds), take(self.points), take(self.stability_score),
                      take(self.crop_boxes), [self.masks[i] for i in keep.tolist()])

    @staticmethod
    def cat(parts: list[_Masks]) -> _Masks:
        """One concatenation of all parts, where stock's ``MaskData.cat`` concatenates pairwise."""
        def cat(vs: list[torch.Tensor | None]) -> torch.Tensor | None:
            return None if vs[0] is None else torch.cat(vs, dim=0)

        return _Masks(cat([p.boxes for p in parts]), cat([p.iou_preds for p in parts]),
                      cat([p.points for p in parts]), cat([p.stability_score for p in parts]),
                      cat([p.crop_boxes for p in parts]), [m for p in parts for m in p.masks])


def _pack_crops(binary: torch.Tensor, boxes: torch.Tensor) -> list[_Packed]:
    """Each mask cut to its inclusive box on its device; only the crop travels to the CPU."""
    out = []
    for mask, (x0, y0, x1, y1) in zip(binary, boxes.cpu().tolist()):
        x0, y0, x1, y1 = int(x0), int(y0), int(x1), int(y1)
        if x1 == y1 == 0 and not bool(mask[0, 0]):  # batched_mask_to_box's box of an empty mask
            out.append(_EMPTY)
        else:
            out.append(_Packed.pack(mask[y0:y1 + 1, x0:x1 + 1].cpu().numpy()))
    return out


def _keep_only(keep: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Stock's ``MaskData.filter`` of each tensor by a boolean mask, on the tensor's own device."""
    return [t[torch.as_tensor(keep, device=t.device)] for t in tensors]


# A CPU chunk of upscaled masks stays well under glibc's largest mmap threshold (32 MB), so its buffers are
# reused from the heap rather than mapped and faulted in afresh, and it stays in the cache for the filters.
_CHUNK_BYTES = 8 * 2**20


@dataclass
class _Decoded:
    """One batch of prompts through the mask decoder, not yet upscaled."""

    masks: torch.Tensor      # (M, 1, h, w) low-res logits; full-size (M, H, W) ones when plane_pixels is 0
    iou_preds: torch.Tensor  # (M,)
    points: torch.Tensor     # (M, 2)
    upscale: Callable[[torch.Tensor], torch.Tensor]  # rows of masks -> (k, H, W) logits at the image's size
    plane_pixels: int        # the most pixels per mask the upscaling writes at once

    def select(self, keep: torch.Tensor) -> _Decoded:
        masks, iou_preds, points = _keep_only(keep, self.masks, self.iou_preds, self.points)
        return _Decoded(masks, iou_preds, points, self.upscale, self.plane_pixels)

    def chunks(self) -> list[slice]:
        n = len(self.iou_preds)
        step = n
        if self.plane_pixels and self.masks.device.type == "cpu":
            step = max(1, _CHUNK_BYTES // (self.masks.element_size() * self.plane_pixels))
        return [slice(s, s + step) for s in range(0, n, max(step, 1))]


def _on_numpy(masks: torch.Tensor) -> bool:
    """Whether the filters below give stock's numbers here: float32 on the CPU, rows narrow enough for
    stock's int16 row sums not to overflow, and at least one mask (stock's boxes of none are float32)."""
    return masks.device.type == "cpu" and masks.dtype == torch.float32 and 0 < len(masks) and masks.shape[-1] < 2**15


def _numpy_stability(masks: torch.Tensor, mask_threshold: float, offset: float) -> torch.Tensor:
    """Stock's ``calculate_stability_score``, one mask at a time while it is in the cache. The counts are
    exact integers either way, and the scalars are compared in float32 as torch compares them."""
    x = masks.numpy()
    above = np.empty(x.shape[1:], dtype=bool)
    hi, lo = np.float32(mask_threshold + offset), np.float32(mask_threshold - offset)
    counts = np.array([(np.count_nonzero(np.greater(m, hi, out=above)), np.count_nonzero(np.greater(m, lo, out=above)))
                       for m in x], dtype=np.int64).reshape(-1, 2)
    counts = torch.from_numpy(counts).to(torch.int32)
    return counts[:, 0] / counts[:, 1]


def _numpy_boxes_and_crops(masks: torch.Tensor, mask_threshold: float) -> tuple[torch.Tensor, list[_Packed]]:
    """Stock's ``batched_mask_to_box`` of the binary masks, and each mask's packed tight crop."""
    threshold = np.float32(mask_threshold)
    boxes = np.zeros((len(masks), 4), dtype=np.int64)
    crops = []
    for i, m in enumerate(masks.numpy()):
        crop, boxes[i] = tight_crop(m > threshold)  # (0, 0, 0, 0) for an empty mask, as stock's
        crops.append(_Packed.pack(crop) if crop.size else _EMPTY)
    return torch.from_numpy(boxes), crops


def tight_crop(mask: np.ndarray, x_offset: int = 0, y_offset: int = 0) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A mask's tight crop and inclusive box (shifted by the offsets); (0, 0) and (0, 0, 0, 0) if empty, as
    ``batched_mask_to_box`` gives."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.zeros((0, 0), dtype=bool), (0, 0, 0, 0)
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    return (np.ascontiguousarray(mask[r0:r1 + 1, c0:c1 + 1]),
            (x_offset + c0, y_offset + r0, x_offset + c1, y_offset + r1))


def _component_sizes(labels: np.ndarray, n_labels: int) -> np.ndarray:
    """Pixel counts of labels 1..n-1 (stock's ``stats[1:, -1]``). cv2's statistics cost several times its
    labelling; torch's bincount is twice as fast as numpy's on an int32 image, but it reads the image three
    times (minimum, maximum, counts), so a mask of a few components (the usual one) is counted label by
    label instead, each in a fifteenth of the time."""
    if n_labels <= 12:
        return np.array([np.count_nonzero(labels == k) for k in range(1, n_labels)], dtype=np.int64)
    return torch.bincount(torch.from_numpy(labels).view(-1), minlength=n_labels).numpy()[1:]


def _stock_remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    from segment_anything.utils.amg import remove_small_regions

    return remove_small_regions(mask, area_thresh, mode)


def remove_small_regions_cropped(
    crop: np.ndarray,
    box: tuple[int, int, int, int],
    image_size: tuple[int, int],
    area_thresh: float,
    mode: str,
    full_image: Callable[[np.ndarray, float, str], tuple[np.ndarray, bool]] = _stock_remove_small_regions,
) -> tuple[np.ndarray, tuple[int, int, int, int], bool]:
    """Stock ``remove_small_regions`` of the full-image mask that ``crop`` at inclusive ``box`` stands for,
    labelling only the box plus a one-pixel margin. Returns the result's tight crop and box, and stock's
    "changed" flag (true when any small region exists, even if the mask comes out the same).

    Islands all lie inside the box, so labelling the crop gives stock's components. Holes inside the box
    are likewise whole; the background outside the box is one component with the margin ring (unless the
    box cuts the image in two), and its true size is its size in the window plus every pixel outside the
    window. ``full_image`` (stock's function) is used on the whole mask where the window cannot decide:
    an empty mask, an outside cut in two, an outside region that is itself small (it would fill the image
    beyond the box), and islands that are all small with a tie for the largest (stock keeps the one cv2
    labels first, and labels depend on the whole image's scan order).
    """
    import cv2

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', not {mode!r}")
    h, w = image_size

    def select(labels: np.ndarray, n_labels: int, chosen: np.ndarray | list[int]) -> np.ndarray:
        """np.isin(labels, chosen), by one comparison when a single label is chosen or left out (a mask is
        mostly one big component with specks around it, and one big background), else by table lookup."""
        table = np.zeros(n_labels, dtype=bool)
        table[chosen] = True
        chosen = np.flatnonzero(table)
        if chosen.size == 1:
            return labels == chosen[0]
        if chosen.size == n_labels - 1:
            return labels != np.flatnonzero(~table)[0]
        return np.take(table, labels)

    def fallback() -> tuple[np.ndarray, tuple[int, int, int, int], bool]:
        full = np.zeros((h, w), dtype=bool)
        if crop.size:
            full[y0:y1 + 1, x0:x1 + 1] = crop
        mask, changed = full_image(full, area_thresh, mode)
        return (*tight_crop(np.asarray(mask, dtype=bool)), bool(changed))

    crop = np.ascontiguousarray(crop, dtype=bool)  # viewed as uint8 below
    x0, y0, x1, y1 = (int(v) for v in box)
    if crop.size == 0:
        return fallback()
    if mode == "islands":
        n_labels, labels = cv2.connectedComponents(crop.view(np.uint8), connectivity=8)
        sizes = _component_sizes(labels, n_labels)
        small = sizes < area_thresh
        if not small.any():
            return crop, (x0, y0, x1, y1), False
        keep = np.flatnonzero(~small) + 1
        if keep.size == 0:
            if np.count_nonzero(sizes == sizes.max()) > 1:
                return fallback()
            keep = [int(np.argmax(sizes)) + 1]
        return (*tight_crop(select(labels, n_labels, keep), x0, y0), True)

    if (x0 == 0 and x1 == w - 1 and y0 > 0 and y1 < h - 1) or (y0 == 0 and y1 == h - 1 and x0 > 0 and x1 < w - 1):
        return fallback()  # the box spans the image one way: the background outside it is in two parts
    top, left, bottom, right = int(y0 > 0), int(x0 > 0), int(y1 < h - 1), int(x1 < w - 1)
    ch, cw = crop.shape
    if top or left or bottom or right:
        window = np.ones((ch + top + bottom, cw + left + right), dtype=np.uint8)  # margin: background
        window[top:top + ch, left:left + cw] = ~crop
    else:
        window = np.logical_not(crop).view(np.uint8)
    n_labels, labels = cv2.connectedComponents(window, connectivity=8)
    sizes = _component_sizes(labels, n_labels)
    if top or left:
        outer = labels[0, 0]
    elif bottom:
        outer = labels[-1, 0]
    elif right:
        outer = labels[0, -1]
    else:
        outer = 0  # the box is the whole image: there is no outside
    if outer:
        sizes[outer - 1] += h * w - window.size
    small = sizes < area_thresh
    if not small.any():
        return crop, (x0, y0, x1, y1), False
    if outer and small[outer - 1]:
        return fallback()
    filled = select(labels[top:top + ch, left:left + cw], n_labels, [0, *(np.flatnonzero(small) + 1)])
    return filled, (x0, y0, x1, y1), True  # holes lie inside the box: it stays tight


class FastMaskGenerator:
    """Stock automatic mask generation for SAM v1 / MobileSAM (``family="sam"``) and SAM 2.1 (``"sam2"``).

    Options are the stock constructors'; ``pred_iou_thresh=None`` means the family's stock default (0.88
    for SAM, 0.8 for SAM 2). As in stock, ``min_mask_region_area`` drives the post-hoc small-region
    cleanup for SAM v1 / MobileSAM, while SAM 2's generator only hands it to its predictor
    (``max_hole_area``/``max_sprinkle_area``, which needs sam2's CUDA extension; without it stock and this
    class alike skip that step with a warning, or set both to 0 on ``generator.predictor._transforms``).

    Extras: ``before_batch`` is called before each batch of point prompts (an exception raised there stops
    the generation); ``float32_points`` sends SAM v1's point coordinates as float32 (Apple MPS has no
    float64; masks may then differ from stock at an edge pixel; SAM 2 always sends float32, so it is a
    no-op there); ``keep_embedding`` leaves the full image's embedding in ``self.predictor`` after
    ``generate`` (the full-image crop is then run last, its masks still placed first) for later prompts;
    ``predictor`` replaces the stock predictor built from ``model`` (one of the family's stock predictor
    classes, e.g. already configured); ``lean=False`` calls SAM v1's mask decoder module as stock does
    instead of ``lean_decoder.decode_points`` (same masks, the decoder tests' reference).
    ``last_network_seconds`` is the time of the last ``generate`` spent in ``set_image`` and the
    predictor's prediction calls, ``last_total_seconds`` all of it.
    """

    def __init__(
        self,
        model: Any,
        family: str,
        *,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float | None = None,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        before_batch: Callable[[], None] | None = None,
        float32_points: bool = False,
        keep_embedding: bool = False,
        predictor: Any = None,
        lean: bool = True,
        **family_specific: Any,
    ) -> None:
        if family not in _PRED_IOU_THRESH:
            raise ValueError(f"family must be 'sam' or 'sam2', not {family!r}")
        if family == "sam":
            if family_specific:
                raise TypeError(f"options {sorted(family_specific)} exist only for family 'sam2' (SAM 2)")
        elif unknown := set(family_specific) - set(_SAM2_OPTIONS):
            raise TypeError(f"unknown options {sorted(unknown)}")
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("exactly one of points_per_side or point_grids must be given")
        self.family = family
        self._amg = self._helpers(family, predictor if predictor is not None else model)
        if points_per_side is not None:
            self.point_grids = self._amg.build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor)
        else:
            self.point_grids = point_grids
        if min_mask_region_area > 0:
            import cv2  # noqa: F401  (stock fails early without OpenCV too)
        self.predictor = predictor if predictor is not None else self._build_predictor(model, min_mask_region_area)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = _PRED_IOU_THRESH[family] if pred_iou_thresh is None else pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.before_batch = before_batch
        self.float32_points = float32_points
        self.keep_embedding = keep_embedding
        options = {**_SAM2_OPTIONS, **family_specific}
        self.mask_threshold = options["mask_threshold"]  # SAM v1 uses its model's, read at each batch
        self.use_m2m = options["use_m2m"]
        self.multimask_output = options["multimask_output"]
        self.last_network_seconds = 0.0
        self.last_total_seconds = 0.0
        # SAM v1 / MobileSAM's stock decoder, run without its unused work (``lean_decoder``)
        self.lean_decoder = lean and family == "sam" and is_stock_decoder(self.predictor.model.mask_decoder)

    @staticmethod
    def _package(obj: Any) -> str:
        package = type(obj).__module__.split(".")[0]
        return package if package in ("segment_anything", "mobile_sam") else "segment_anything"

    def _helpers(self, family: str, model_or_predictor: Any) -> ModuleType:
        """The amg helpers of the model's own package: same functions as its stock generator."""
        package = "sam2" if family == "sam2" else self._package(model_or_predictor)
        return importlib.import_module(f"{package}.utils.amg")

    def _build_predictor(self, model: Any, min_mask_region_area: int) -> Any:
        if self.family == "sam2":
            from sam2.sam2_image_predictor import SAM2ImagePredictor

            return SAM2ImagePredictor(model, max_hole_area=min_mask_region_area,
                                      max_sprinkle_area=min_mask_region_area)
        return importlib.import_module(self._package(model)).SamPredictor(model)

    @contextmanager
    def _network(self) -> Iterator[None]:
        """Counts the block's seconds as network time, waiting for CUDA so that the clock is honest."""
        device = torch.device(self.predictor.device)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda _device: None)
        sync(device)
        start = time.perf_counter()
        try:
            yield
        finally:
            sync(device)
            self.last_network_seconds += time.perf_counter() - start

    @torch.no_grad()
    def generate(self, image: np.ndarray) -> MaskSet:
        """The stock generator's masks of an HxWx3 uint8 RGB image."""
        start = time.perf_counter()
        self.last_network_seconds = 0.0
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = self._amg.generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        # Crops are independent; with keep_embedding the full image (crop 0) runs last so that its
        # embedding is the one left in the predictor. Results are still concatenated in stock's order.
        order = [*range(1, len(crop_boxes)), 0] if self.keep_embedding else range(len(crop_boxes))
        per_crop: list[_Masks | None] = [None] * len(crop_boxes)
        for i in order:
            keep = self.keep_embedding and i == 0
            per_crop[i] = self._process_crop(image, crop_boxes[i], layer_idxs[i], orig_size, keep)
        data = _Masks.cat(per_crop)

        if len(crop_boxes) > 1 and len(data):  # stock fails here (box_area of an empty 1-D tensor) with none
            scores = 1 / box_area(data.crop_boxes)  # prefer masks from smaller crops
            scores = scores.to(data.boxes.device)
            keep_by_nms = batched_nms(data.boxes.float(), scores, torch.zeros_like(data.boxes[:, 0]),
                                      iou_threshold=self.crop_nms_thresh)
            data = data.select(keep_by_nms)
        result = self._mask_set(data, orig_size)
        result.network_seconds = self.last_network_seconds
        result.prompter = self.predictor if self.keep_embedding else None
        self.last_total_seconds = time.perf_counter() - start
        return result

    def _process_crop(self, image: np.ndarray, crop_box: list[int], layer_idx: int,
                      orig_size: tuple[int, ...], keep_embedding: bool) -> _Masks:
        x0, y0, x1, y1 = crop_box
        cropped_im = image[y0:y1, x0:x1, :]
        cropped_im_size = cropped_im.shape[:2]
        with self._network():
            self.predictor.set_image(cropped_im)
        points_scale = np.array(cropped_im_size)[None, ::-1]
        points_for_image = self.point_grids[layer_idx] * points_scale
        batches = [self._process_batch(points, cropped_im_size, crop_box, orig_size)
                   for (points,) in self._amg.batch_iterator(self.points_per_batch, points_for_image)]
        if not keep_embedding:
            if self.family == "sam2":
                self.predictor.reset_predictor()
            else:
                self.predictor.reset_image()
        if not batches:  # a layer without points; stock fails on it
            device = self.predictor.device
            dtype = torch.float32 if self.family == "sam2" else torch.float64
            return _Masks(torch.zeros(0, 4, device=device), torch.zeros(0, device=device),
                          torch.zeros(0, 2, dtype=dtype), torch.zeros(0, device=device), torch.tensor([]), [])
        data = _Masks.cat(batches)

        keep_by_nms = batched_nms(data.boxes.float(), data.iou_preds, torch.zeros_like(data.boxes[:, 0]),
                                  iou_threshold=self.box_nms_thresh)
        data = data.select(keep_by_nms)
        data.boxes = self._amg.uncrop_boxes_xyxy(data.boxes, crop_box)
        data.points = self._amg.uncrop_points(data.points, crop_box)
        data.crop_boxes = torch.tensor([crop_box for _ in range(len(data))])
        return data

    def _decode(self, points: np.ndarray, im_size: tuple[int, ...]) -> _Decoded:
        """The prompt encoder and mask decoder exactly as the stock predictor calls them, stopping before
        its upscaling, which ``_Decoded.upscale`` does later for the masks the IoU threshold keeps."""
        predictor = self.predictor
        if self.family == "sam":
            transformed_points = predictor.transform.apply_coords(points, im_size)
            if self.float32_points:
                transformed_points = transformed_points.astype(np.float32)
            in_points = torch.as_tensor(transformed_points, device=predictor.device)
            in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
            model = predictor.model

            def upscale(rows: torch.Tensor) -> torch.Tensor:
                return model.postprocess_masks(rows, predictor.input_size, predictor.original_size)[:, 0]

            h, w = predictor.original_size
            plane = max(model.image_encoder.img_size**2, h * w)
            with self._network():  # stock SamPredictor.predict_torch up to postprocess_masks
                sparse, dense = model.prompt_encoder(points=(in_points[:, None, :], in_labels[:, None]),
                                                     boxes=None, masks=None)
                if self.lean_decoder:  # only the masks that pass the IoU threshold are made
                    iou_preds, kept, low_res = decode_points(
                        model.mask_decoder, predictor.features, model.prompt_encoder.get_dense_pe(), sparse, dense,
                        True, self._passing)
                else:
                    low_res, iou_preds = model.mask_decoder(
                        image_embeddings=predictor.features, image_pe=model.prompt_encoder.get_dense_pe(),
                        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True)
            mask_points = torch.as_tensor(points.repeat(iou_preds.shape[1], axis=0))
            if self.lean_decoder:
                kept = kept.flatten()
                return _Decoded(low_res[:, None].float(), iou_preds.flatten()[kept].float(),
                                mask_points[kept.to(mask_points.device)], upscale, plane)
            return self._thresholded(_Decoded(low_res.flatten(0, 1)[:, None].float(),
                                              iou_preds.flatten(0, 1).float(), mask_points, upscale, plane))

        transforms = predictor._transforms
        points = torch.as_tensor(points, dtype=torch.float32, device=predictor.device)
        in_points = transforms.transform_coords(points, normalize=True, orig_hw=im_size)
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
        if self.use_m2m:
            masks, iou_preds, mask_points = self._predict_m2m(points, in_points, in_labels, im_size)
            return self._thresholded(_Decoded(masks.float(), iou_preds.float(), mask_points, lambda rows: rows, 0))
        model, features = predictor.model, predictor._features
        with self._network():  # stock SAM2ImagePredictor._predict up to postprocess_masks (img_idx -1)
            sparse, dense = model.sam_prompt_encoder(points=(in_points[:, None, :], in_labels[:, None]),
                                                     boxes=None, masks=None)
            low_res, iou_preds, _, _ = model.sam_mask_decoder(
                image_embeddings=features["image_embed"][-1].unsqueeze(0),
                image_pe=model.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                multimask_output=self.multimask_output, repeat_image=in_points.shape[0] > 1,
                high_res_features=[level[-1].unsqueeze(0) for level in features["high_res_feats"]])
        mask_points = points.repeat_interleave(low_res.shape[1], dim=0)

        def upscale_sam2(rows: torch.Tensor) -> torch.Tensor:
            return transforms.postprocess_masks(rows, predictor._orig_hw[-1])[:, 0]

        h, w = predictor._orig_hw[-1]
        return self._thresholded(_Decoded(low_res.flatten(0, 1)[:, None].float(), iou_preds.flatten(0, 1).float(),
                                          mask_points, upscale_sam2, h * w))

    def _passing(self, iou_preds: torch.Tensor) -> torch.Tensor:
        """Which masks pass the predicted-IoU threshold (stock's filter: all of them at 0)."""
        if self.pred_iou_thresh > 0.0:
            return iou_preds.float() > self.pred_iou_thresh
        return torch.ones_like(iou_preds, dtype=torch.bool)

    def _thresholded(self, decoded: _Decoded) -> _Decoded:
        """Stock's IoU filter, applied before the upscaling (each mask's filters depend on it alone)."""
        if self.pred_iou_thresh > 0.0:
            return decoded.select(decoded.iou_preds > self.pred_iou_thresh)
        return decoded

    def _predict_m2m(self, points: torch.Tensor, in_points: torch.Tensor, in_labels: torch.Tensor,
                     im_size: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stock's refine_with_m2m: one more decoder pass per mask, prompted with its own low-res logits."""
        transforms = self.predictor._transforms
        with self._network():
            masks, _, low_res_masks = self.predictor._predict(
                in_points[:, None, :], in_labels[:, None], multimask_output=self.multimask_output,
                return_logits=True)
        mask_points = points.repeat_interleave(masks.shape[1], dim=0)
        del masks
        low_res_masks = low_res_masks.flatten(0, 1)
        in_points = transforms.transform_coords(mask_points, normalize=True, orig_hw=im_size)
        labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
        new_masks, new_iou_preds = [], []
        for cur_points, cur_labels, low_res_mask in self._amg.batch_iterator(
                self.points_per_batch, in_points, labels, low_res_masks):
            with self._network():
                best_masks, best_iou_preds, _ = self.predictor._predict(
                    cur_points[:, None, :], cur_labels[:, None], mask_input=low_res_mask[:, None, :],
                    multimask_output=False, return_logits=True)
            new_masks.append(best_masks)
            new_iou_preds.append(best_iou_preds)
        return torch.cat(new_masks, dim=0).squeeze(1), torch.cat(new_iou_preds, dim=0).squeeze(1), mask_points

    def _process_batch(self, points: np.ndarray, im_size: tuple[int, ...], crop_box: list[int],
                       orig_size: tuple[int, ...]) -> _Masks:
        """Stock's ``_process_batch``, mask by mask: each mask's filters and box depend on it alone, so the
        IoU threshold is applied before upscaling (stock upscales every mask, then drops most of them at
        real weights' thresholds), and the rest is upscaled a few masks at a time. Stock's whole-batch
        tensors (16 prompts x 3 masks at the full image size, 50-800 MB) are fresh pages on every batch
        on a CPU: writing them cost more than computing them."""
        if self.before_batch is not None:
            self.before_batch()
        decoded = self._decode(points, im_size)  # only the masks whose predicted IoU passes
        mask_threshold = self.mask_threshold if self.family == "sam2" else self.predictor.model.mask_threshold
        parts = [self._process_masks(decoded, rows, mask_threshold, crop_box, orig_size)
                 for rows in decoded.chunks()] or [self._process_masks(decoded, slice(0, 0), mask_threshold,
                                                                      crop_box, orig_size)]
        kept = [part for part in parts if len(part)]
        if not kept:  # stock's boxes are float32 only if no mask reached batched_mask_to_box, else int64
            kept = [min(parts, key=lambda part: part.boxes.is_floating_point())]
        return _Masks.cat(kept)  # an empty chunk's float32 boxes would otherwise promote the batch's

    def _process_masks(self, decoded: _Decoded, rows: slice, mask_threshold: float, crop_box: list[int],
                       orig_size: tuple[int, ...]) -> _Masks:
        orig_h, orig_w = orig_size
        amg = self._amg
        masks = decoded.masks[rows]
        if len(masks) == 0 and decoded.plane_pixels:
            # None passed the IoU threshold (the usual batch at real weights): stock's filters of no masks,
            # without upscaling an empty batch, which stock never does and not every device's kernel takes.
            masks = masks.new_zeros((0, 1, 1), dtype=torch.float32 if self.family == "sam2" else masks.dtype)
        else:
            with self._network():
                masks = decoded.upscale(masks)
        iou_preds, mask_points = decoded.iou_preds[rows], decoded.points[rows]
        if _on_numpy(masks):
            stability = _numpy_stability(masks, mask_threshold, self.stability_score_offset)
        else:
            stability = amg.calculate_stability_score(masks, mask_threshold, self.stability_score_offset)
        if self.stability_score_thresh > 0.0:
            keep = stability >= self.stability_score_thresh
            masks, iou_preds, mask_points, stability = _keep_only(keep, masks, iou_preds, mask_points, stability)
        if _on_numpy(masks):
            boxes, crops = _numpy_boxes_and_crops(masks, mask_threshold)
        else:
            binary = masks > mask_threshold
            boxes = amg.batched_mask_to_box(binary)
            crops = None
        del masks
        keep = ~amg.is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
        if not torch.all(keep):
            boxes, iou_preds, mask_points, stability = _keep_only(keep, boxes, iou_preds, mask_points, stability)
            if crops is None:
                (binary,) = _keep_only(keep, binary)
            else:
                crops = [crops[i] for i in keep.nonzero().flatten().tolist()]
        if crops is None:
            crops = _pack_crops(binary, boxes)
        return _Masks(boxes, iou_preds, mask_points, stability, None, crops)

    def _mask_set(self, data: _Masks, image_size: tuple[int, ...]) -> MaskSet:
        def to_numpy(t: torch.Tensor) -> np.ndarray:  # stock's MaskData.to_numpy (SAM 2's casts to float)
            return (t.float() if self.family == "sam2" else t).detach().cpu().numpy()

        boxes = to_numpy(data.boxes).reshape(-1, 4)
        crop_boxes = to_numpy(data.crop_boxes).reshape(-1, 4)
        float_boxes, float_crop_boxes = boxes.dtype.kind == "f", crop_boxes.dtype.kind == "f"
        out = MaskSet(
            image_size=(int(image_size[0]), int(image_size[1])),
            boxes=boxes.astype(np.int64),
            crops=[m.unpack() for m in data.masks],
            predicted_iou=to_numpy(data.iou_preds).astype(np.float32),
            stability_score=to_numpy(data.stability_score).astype(np.float32),
            point_coords=to_numpy(data.points).astype(np.float64).reshape(-1, 2),
            crop_boxes=crop_boxes.astype(np.int64),
            areas=np.zeros(0, dtype=np.int64),
            record_float_boxes=float_boxes,
            record_float_crop_boxes=float_crop_boxes,
        )
        if self.family == "sam" and self.min_mask_region_area > 0:
            out = self._postprocess_small_regions(out, self.min_mask_region_area,
                                                  max(self.box_nms_thresh, self.crop_nms_thresh))
        out.areas = np.array([np.count_nonzero(c) for c in out.crops], dtype=np.int64)
        return out

    def _postprocess_small_regions(self, masks: MaskSet, min_area: int, nms_thresh: float) -> MaskSet:
        """Stock's ``postprocess_small_regions``: holes then islands on every mask, NMS preferring unchanged
        masks, new mask and box only for the changed masks NMS keeps; each mask is labelled in its box."""
        if len(masks) == 0:
            return masks
        def clean(crop: np.ndarray, box: list[int]) -> tuple[np.ndarray, tuple[int, int, int, int], float]:
            crop, box, changed_holes = remove_small_regions_cropped(
                crop, box, masks.image_size, min_area, "holes", self._amg.remove_small_regions)
            crop, box, changed_islands = remove_small_regions_cropped(
                crop, box, masks.image_size, min_area, "islands", self._amg.remove_small_regions)
            return crop, box, float(not (changed_holes or changed_islands))

        # Each mask on its own, in threads: cv2's labelling and torch's bincount release the GIL, and with
        # hundreds of masks this loop is most of what the generator adds to the networks' time.
        workers = min(torch.get_num_threads(), len(masks) // 8)
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                done = list(pool.map(clean, masks.crops, masks.boxes.tolist()))
        else:
            done = [clean(c, b) for c, b in zip(masks.crops, masks.boxes.tolist())]
        new_crops, new_boxes, scores = (list(column) for column in zip(*done))
        boxes = torch.tensor(new_boxes, dtype=torch.int64)
        keep_by_nms = batched_nms(boxes.float(), torch.as_tensor(scores), torch.zeros_like(boxes[:, 0]),
                                  iou_threshold=nms_thresh)
        keep = keep_by_nms.numpy()
        crops, out_boxes = list(masks.crops), masks.boxes.copy()
        for i in keep.tolist():
            if scores[i] == 0.0:
                crops[i] = new_crops[i]
                out_boxes[i] = new_boxes[i]
        return MaskSet(
            image_size=masks.image_size,
            boxes=out_boxes[keep],
            crops=[crops[i] for i in keep.tolist()],
            predicted_iou=masks.predicted_iou[keep],
            stability_score=masks.stability_score[keep],
            point_coords=masks.point_coords[keep],
            crop_boxes=masks.crop_boxes[keep],
            areas=masks.areas,
            record_float_boxes=masks.record_float_boxes,
            record_float_crop_boxes=masks.record_float_crop_boxes,
        )
