"""The training-free papers' inference protocol (SCLIP, ClearCLIP, NACLIP), for ``eval --method dense
--protocol training-free``; the values per benchmark are ``deop.benchmarks.Protocol``.

Per image, as their mmsegmentation segmentors do:
  1. resize like mmsegmentation's Resize(scale=(2048, short_side), keep_ratio=True): scale by
     min(2048 / long, short_side / short), sides int(side * scale + 0.5), bilinear (OpenCV);
  2. normalise with CLIP's mean and std; slide a window of `window` pixels by `stride` (the last window of a
     row or column ends at the border; a window 0 takes the whole image): each window is one dense CLIP
     pass of the variant (the position table resized by the official rule, ``POSITION_RULES``), patch
     features L2-normalised, cosine with every prompt, bilinearly upsampled to the window; the windows'
     logits are averaged where they overlap (every pixel is covered at least once);
  3. upsample the averaged logits bilinearly to the original size, softmax over all prompts at the
     protocol's logit scale, each class's probability the best of its names' (synonyms), argmax; SCLIP's
     area rule on VOC21; pixels whose best probability is below the threshold become the background (0).
Each name is prompted with OpenAI's 80 ImageNet templates (``TEMPLATES["imagenet80"]``), unless the caller
asks for another set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .benchmarks import Protocol
from .classify import _normalise, image_tensor
from .clip.dense import encode_dense, patch_size_of
from .clip.model import ClipModel
from .vocabulary import Vocabulary

PROTOCOL_TEMPLATES = "imagenet80"
WINDOW_BATCH = 8  # windows of the same size encoded together


def protocol_size(shape: tuple[int, int], protocol: Protocol) -> tuple[int, int]:
    """(H, W) after mmsegmentation's keep-ratio Resize to (long_side, short_side)."""
    h, w = shape
    scale = min(protocol.long_side / max(h, w), protocol.short_side / min(h, w))
    return int(h * scale + 0.5), int(w * scale + 0.5)


def resize_image(image: np.ndarray, protocol: Protocol) -> np.ndarray:
    import cv2

    h, w = protocol_size(image.shape[:2], protocol)
    if (h, w) == image.shape[:2]:
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


def windows(height: int, width: int, window: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of mmsegmentation's sliding windows: a grid with step `stride`, the last window of
    each row and column moved back to end at the border, windows cut to the image when it is smaller."""
    if window <= 0:
        return [(0, height, 0, width)]
    out = []
    rows = max(height - window + stride - 1, 0) // stride + 1
    cols = max(width - window + stride - 1, 0) // stride + 1
    for r in range(rows):
        for c in range(cols):
            y1, x1 = min(r * stride + window, height), min(c * stride + window, width)
            out.append((max(y1 - window, 0), y1, max(x1 - window, 0), x1))
    return out


@dataclass
class Queries:
    """Every name of every class as one prompt: [Q, D] normalised embeddings, the class of each."""

    embeddings: torch.Tensor
    owner: torch.Tensor
    n_classes: int


def encode_queries(text_cache, clip: ClipModel, vocabulary: Vocabulary, templates: str = PROTOCOL_TEMPLATES
                   ) -> Queries:
    prompts = [p for spec in vocabulary.classes for p in spec.prompts]
    owner = torch.tensor([i for i, spec in enumerate(vocabulary.classes) for _ in spec.prompts], device=clip.device)
    return Queries(text_cache.names(clip, prompts, templates), owner, len(vocabulary))


def _window_features(clip: ClipModel, crops: torch.Tensor, variant: str, n_severed: int, partial_patch: str
                     ) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """Normalised patch features [B, D, gh, gw] of same-sized normalised crops [B, 3, h, w]; the size the
    logits are upsampled to and the (top, left) offset of the crop in it (ClearCLIP's padding)."""
    p = patch_size_of(clip.model)
    h, w = crops.shape[-2:]
    top = left = 0
    size = (h, w)
    if partial_patch == "pad" and (h % p or w % p):  # ClearCLIP: zeros around, split evenly, cut off after
        dh, dw = -h % p, -w % p
        top, left = dh // 2, dw // 2
        crops = F.pad(crops, (left, dw - left, top, dh - top))
        size = (h + dh, w + dw)
    elif partial_patch == "floor":  # SCLIP, NACLIP: the ViT's stride-p convolution drops the remainder
        crops = crops[..., : h // p * p, : w // p * p]
    feats = encode_dense(clip.model, crops.to(clip.dtype), variant, n_severed, position_rule="official").float()
    return F.normalize(feats, dim=1), size, (top, left)


def protocol_logits(clip: ClipModel, image: np.ndarray, queries: Queries, variant: str, protocol: Protocol,
                    n_severed: int = 1) -> torch.Tensor:
    """[Q, H, W] averaged window logits (cosine) at the original image size."""
    resized = resize_image(image, protocol)
    pixels = _normalise(image_tensor(resized, clip.device)[None], clip)
    _, _, h, w = pixels.shape
    text = queries.embeddings
    total = torch.zeros((len(text), h, w), device=clip.device)
    count = torch.zeros((1, h, w), device=clip.device)
    boxes = windows(h, w, protocol.window, protocol.stride)
    with torch.inference_mode():
        groups: dict[tuple[int, int], list[tuple[int, int, int, int]]] = {}
        for box in boxes:
            groups.setdefault((box[1] - box[0], box[3] - box[2]), []).append(box)
        for group in groups.values():
            for start in range(0, len(group), WINDOW_BATCH):
                chunk = group[start: start + WINDOW_BATCH]
                crops = torch.cat([pixels[..., y0:y1, x0:x1] for y0, y1, x0, x1 in chunk])
                feats, size, (top, left) = _window_features(clip, crops, variant, n_severed, protocol.partial_patch)
                for (y0, y1, x0, x1), f in zip(chunk, feats):  # one window's [Q, h, w] logits at a time
                    logits = torch.einsum("dhw,qd->qhw", f, text.to(f.dtype))
                    logits = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
                    total[:, y0:y1, x0:x1] += logits[:, top: top + y1 - y0, left: left + x1 - x0]
                    count[:, y0:y1, x0:x1] += 1
        averaged = total / count
        return F.interpolate(averaged[None], size=image.shape[:2], mode="bilinear", align_corners=False)[0]


def protocol_labels(logits: torch.Tensor, queries: Queries, protocol: Protocol, background: int | None
                    ) -> np.ndarray:
    """[H, W] int32 class indices from [Q, H, W] logits: softmax over prompts, best synonym per class,
    SCLIP's area rule, the background threshold."""
    with torch.inference_mode():
        probs = (logits * protocol.logit_scale).softmax(dim=0)
        if len(queries.owner) != queries.n_classes:
            per_class = torch.full((queries.n_classes, *probs.shape[1:]), -1.0, device=probs.device)
            index = queries.owner[:, None, None].expand_as(probs)
            probs = per_class.scatter_reduce(0, index, probs, reduce="amax", include_self=True)
        if protocol.area_threshold is not None:  # SCLIP's VOC21 rule; class 0 is the background
            counts = torch.bincount(probs.argmax(dim=0).flatten(), minlength=queries.n_classes)[1:]
            keep = (counts > protocol.area_threshold * counts.sum()).to(probs.dtype)
            probs[1:] *= keep[:, None, None]
        best, label = probs.max(dim=0)
        label[best < protocol.threshold] = background if background is not None else 0
    return label.to(torch.int32).cpu().numpy()


def predict(segmenter, image: np.ndarray, vocabulary: Vocabulary, variant: str, protocol: Protocol,
            background: int | None, templates: str = PROTOCOL_TEMPLATES, n_severed: int = 1) -> np.ndarray:
    """The protocol's label map for one image with the segmenter's CLIP and text cache."""
    clip = segmenter.clip
    queries = encode_queries(segmenter.text_cache, clip, vocabulary, templates)
    logits = protocol_logits(clip, image, queries, variant, protocol, n_severed)
    return protocol_labels(logits, queries, protocol, background)
