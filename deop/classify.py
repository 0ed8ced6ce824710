"""Classifying proposals: pooled from one dense CLIP pass (DeOP) or one CLIP pass per crop (baseline).

Both paths score against the same text embeddings with the same temperature, so that the only
difference the app's comparison shows is where the region embedding comes from.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .clip.dense import encode_dense, patch_size_of
from .clip.model import ClipModel
from .images import nearest_indices
from .proposers import Proposals
from .timing import Deadline


def _normalise(pixels: torch.Tensor, clip: ClipModel) -> torch.Tensor:
    mean = torch.tensor(clip.mean, device=pixels.device).view(-1, 3, 1, 1)
    std = torch.tensor(clip.std, device=pixels.device).view(-1, 3, 1, 1)
    return (pixels - mean) / std


def image_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """HxWx3 uint8 → [3, H, W] float in [0, 1], as torchvision's ToTensor does. A read-only image (a
    cached one, shared) is copied first: torch warns on it, although nothing here writes to it."""
    pixels = np.ascontiguousarray(image) if image.flags.writeable else np.array(image, order="C")
    return torch.from_numpy(pixels).to(device).permute(2, 0, 1).float().div_(255)


def clip_grid(shape: tuple[int, int], clip_size: int, patch: int) -> tuple[int, int]:
    """Patch grid for an image of `shape` whose long side is scaled to `clip_size` (aspect kept)."""
    h, w = shape
    scale = clip_size / max(h, w)
    return max(1, round(h * scale / patch)), max(1, round(w * scale / patch))


def dense_features(clip: ClipModel, image: np.ndarray, clip_size: int, variant: str = "deop",
                   n_severed: int = 1) -> torch.Tensor:
    """One CLIP pass over the whole image: [D, gh, gw] projected patch embeddings (not normalised)."""
    p = patch_size_of(clip.model)
    gh, gw = clip_grid(image.shape[:2], clip_size, p)
    pixels = image_tensor(image, clip.device)[None]
    if pixels.shape[-2:] != (gh * p, gw * p):
        pixels = F.interpolate(pixels, size=(gh * p, gw * p), mode="bicubic", antialias=True,
                               align_corners=False).clamp_(0, 1)
    with torch.inference_mode(), clip.autocast():
        feats = encode_dense(clip.model, _normalise(pixels, clip).to(clip.dtype), variant, n_severed)
    return feats[0].float()


def cell_counts(segment_map: np.ndarray, n: int, grid: tuple[int, int]) -> torch.Tensor:
    """[n, gh*gw] pixels of each segment in each patch cell.

    Summing features with these weights is DeOP's sum pooling of a nearest-upsampled feature map
    inside each mask, computed in one pass over the pixels instead of n upsampled masks.
    """
    h, w = segment_map.shape
    gh, gw = grid
    cell = nearest_indices(gh, h)[:, None] * gw + nearest_indices(gw, w)[None, :]
    inside = segment_map >= 0
    flat = segment_map[inside].astype(np.int64) * (gh * gw) + cell[inside]
    counts = np.bincount(flat, minlength=n * gh * gw).reshape(n, gh * gw)
    return torch.from_numpy(counts.astype(np.float32))


def pool_segments(features: torch.Tensor, proposals: Proposals) -> torch.Tensor:
    """[N, D] L2-normalised segment embeddings: one matrix product for all masks."""
    return pool_map(features, proposals.segment_map, len(proposals))


def pool_map(features: torch.Tensor, segment_map: np.ndarray, n: int) -> torch.Tensor:
    """[n, D] L2-normalised embeddings of segments 0..n-1 of any id map at the image's size (a single
    added mask is ``np.where(mask, 0, -1)``)."""
    d, gh, gw = features.shape
    weights = cell_counts(segment_map, n, (gh, gw)).to(features.device)
    return F.normalize(weights @ features.reshape(d, -1).T, dim=-1)


def labels_from(probs: torch.Tensor, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The one labelling rule, for segments and pixels alike: the most probable class over the last
    axis, or -1 ("none of these") where its probability is below `threshold`. (labels int32, best)"""
    if probs.shape[-1] == 0 or probs.numel() == 0:
        shape = probs.shape[:-1]
        return np.full(shape, -1, dtype=np.int32), np.zeros(shape, dtype=np.float32)
    best, label = probs.max(dim=-1)
    label, best = label.cpu().numpy().astype(np.int32), best.float().cpu().numpy()
    label[best < threshold] = -1
    return label, best


def probabilities(embeddings: torch.Tensor, text: torch.Tensor, logit_scale: float = 100.0) -> torch.Tensor:
    """Softmax over classes of scaled cosine similarity; both inputs already normalised."""
    if len(embeddings) == 0:
        return torch.zeros((0, len(text)), device=text.device)
    return (logit_scale * embeddings @ text.T.to(embeddings.dtype)).softmax(dim=-1)


def crop_boxes(boxes: np.ndarray, margin: float, shape: tuple[int, int]) -> np.ndarray:
    """Segment boxes enlarged by `margin` of their size on every side, clipped to the image."""
    h, w = shape
    b = boxes.astype(np.float64)
    dw, dh = (b[:, 2] - b[:, 0]) * margin, (b[:, 3] - b[:, 1]) * margin
    out = np.stack([np.floor(b[:, 0] - dw), np.floor(b[:, 1] - dh),
                    np.ceil(b[:, 2] + dw), np.ceil(b[:, 3] + dh)], axis=1)
    out = np.clip(out, 0, [w, h, w, h]).astype(np.int64)
    return out


def crop_pixels(image: torch.Tensor, segment_map: torch.Tensor, index: int, box: np.ndarray,
                size: int, fill: torch.Tensor) -> torch.Tensor:
    """One masked crop: its box, pixels outside the mask set to CLIP's mean colour, padded square, resized."""
    x0, y0, x1, y1 = (int(v) for v in box)
    crop = image[:, y0:y1, x0:x1].clone()
    outside = segment_map[y0:y1, x0:x1] != index
    crop[:, outside] = fill[:, None]
    ch, cw = crop.shape[-2:]
    side = max(ch, cw)
    if ch != cw:  # pad to a square with the fill colour so that the object is not stretched
        canvas = fill[:, None, None].expand(3, side, side).clone()
        top, left = (side - ch) // 2, (side - cw) // 2
        canvas[:, top: top + ch, left: left + cw] = crop
        crop = canvas
    if side != size:
        crop = F.interpolate(crop[None], size=(size, size), mode="bicubic", antialias=True,
                             align_corners=False)[0].clamp_(0, 1)
    return crop


# Crops per batch where the option says 0. On the 2-core development CPU (32 MB L3), 8 crops of 224 px a
# batch took 15-18 % less time than 32 at 25-100 crops in float32, and 3-22 % less in bfloat16 (medians of
# 4-5 rounds in turn; equal at 10 crops): a batch's activations then stay in cache, and 1576 tokens still
# fill a matrix product. A GPU wants large batches.
CROP_BATCH = {"cpu": 8}
GPU_CROP_BATCH = 32


def crop_batch_size(requested: int, device: torch.device) -> int:
    """The crops per batch for the option's value `requested` (0: by device)."""
    return requested or CROP_BATCH.get(device.type, GPU_CROP_BATCH)


def encode_crops(clip: ClipModel, image: np.ndarray, proposals: Proposals, margin: float = 0.1,
                 batch_size: int = 0, deadline: Deadline | None = None) -> torch.Tensor:
    """The crop baseline: [N, D] normalised ``encode_image`` embeddings, one CLIP input per segment.

    Made as fast as it fairly can be (crops built on the model's device, batched at the size that suits
    the device, inference mode, the precision of the one pass) so that the one-pass speed-up is measured
    against a strong baseline.
    """
    batch_size = crop_batch_size(batch_size, clip.device)
    n = len(proposals)
    if n == 0:
        return torch.zeros((0, clip.model.visual.output_dim), device=clip.device)
    pixels = image_tensor(image, clip.device)
    seg = torch.from_numpy(proposals.segment_map).to(clip.device)
    fill = torch.tensor(clip.mean, device=clip.device, dtype=pixels.dtype)
    boxes = crop_boxes(proposals.boxes, margin, image.shape[:2])
    out = []
    with torch.inference_mode(), clip.autocast():
        for start in range(0, n, batch_size):
            if deadline is not None:
                deadline.check("crop encoding")
            idx = range(start, min(n, start + batch_size))
            batch = torch.stack([crop_pixels(pixels, seg, i, boxes[i], clip.image_size, fill) for i in idx])
            emb = clip.model.encode_image(_normalise(batch, clip).to(clip.dtype))
            out.append(F.normalize(emb.float(), dim=-1))
    return torch.cat(out)


def dense_similarity(features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """[C, gh, gw] cosine similarity of every patch with every class (the heatmaps)."""
    d, gh, gw = features.shape
    patches = F.normalize(features.reshape(d, -1), dim=0)
    return (text.to(patches.dtype) @ patches).reshape(len(text), gh, gw)


def dense_labels(similarity: torch.Tensor, shape: tuple[int, int], logit_scale: float = 100.0,
                 threshold: float = 0.0, max_side: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel labels and probabilities at `shape` from the patch similarities.

    Logits are upsampled bilinearly to at most `max_side` on the long side (memory stays bounded for
    150 classes on a large image) and then mapped to `shape` by nearest neighbour.
    """
    h, w = shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, math.ceil(h * scale)), max(1, math.ceil(w * scale)))
    logits = F.interpolate(similarity[None].float() * logit_scale, size=size, mode="bilinear",
                           align_corners=False)[0]
    label, prob = labels_from(logits.softmax(dim=0).permute(1, 2, 0), threshold)
    rows, cols = nearest_indices(size[0], h)[:, None], nearest_indices(size[1], w)[None, :]
    return label[rows, cols], prob[rows, cols]
