"""The trained method's two steps on the pipeline's request: its image stage (CLIP with the generator's
masks, then CAL) and its labels (per-segment probabilities from each segment's query, the label map from
the official combination of all queries).

CLIP reads the generator's own input tensor, carried with its masks (``QueryMasks.pixels``): the image
resized so that its short side is 512 (long side at most 2560), ImageNet-normalised, zero-padded to a
multiple of 32 (``zero_shot_clipfeat_upsample_vit16_query2D_maskvit.py`` 248-270: ``images.tensor`` feeds
the backbone and CLIP alike, so CLIP sees the padded image at full resolution, not resized to 224, and
with ImageNet's statistics, not CLIP's: the model was trained that way).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .model import (
    TrainedClassifier,
    TrainedEncoding,
    class_probabilities,
    image_masks,
    label_map,
    query_logits,
    semantic_scores,
)


def queries_of(proposals: Any) -> Any:
    """The generator's ``QueryMasks`` carried with the proposals (``deop.trained.generator``)."""
    queries = getattr(proposals, "queries", None)
    if queries is None:
        raise ValueError("the trained method needs the deop-trained generator's proposals (with their queries)")
    return queries


def encode_trained(trained: TrainedClassifier, proposals: Any) -> TrainedEncoding:
    """CLIP's pass on the generator's own input tensor with its mask logits, then CAL."""
    queries = queries_of(proposals)
    encoded = trained.encode(queries.pixels, queries.logits)
    encoded.none = trained.head.none_embedding()
    encoded.size, encoded.padded = tuple(queries.resized_size), tuple(queries.padded_size)
    return encoded


def classify_trained(encoded: TrainedEncoding, proposals: Any, text: torch.Tensor, work_shape: tuple[int, int]
                     ) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """(label map at the working size, [N, C] per-segment probabilities, [C, gh, gw] heatmaps)."""
    logits = queries_of(proposals).logits
    with torch.inference_mode():
        probs = class_probabilities(query_logits(encoded.anchors, text, encoded.none))
        masks = image_masks(logits.to(probs.device), encoded.padded, encoded.size)
        labels = label_map(semantic_scores(probs, masks), tuple(work_shape))
        source = torch.as_tensor(np.asarray(proposals.source, dtype=np.int64), device=probs.device)
        # the heatmaps over the patches that cover the image, not the padding (to within one patch)
        patch = encoded.padded[0] // encoded.features.shape[0]
        gh, gw = (-(-side // patch) for side in encoded.size)
        features = encoded.features[:gh, :gw]
        similarity = torch.einsum("cd,hwd->chw", text.to(features.dtype), features)
    return labels, probs[source], similarity.cpu().numpy()


def vocabulary_text(trained: TrainedClassifier, vocabulary: Any) -> tuple[torch.Tensor, list[str]]:
    """[C, D] normalised class embeddings from the learned prompt (a class with synonyms averages its names'),
    and the names too long for CLIP's context beside the prompt (truncated)."""
    import torch.nn.functional as F

    names = [p for spec in vocabulary.classes for p in spec.prompts]
    per_name = trained.names(names)
    out, start = [], 0
    for spec in vocabulary.classes:
        out.append(per_name[start: start + len(spec.prompts)].mean(dim=0))
        start += len(spec.prompts)
    text = F.normalize(torch.stack(out), dim=-1) if out else per_name
    return text, trained.head.prompts.overlong(trained.tokenizer, names)


def load_classifier(device: torch.device, random_weights: bool, checkpoint: str | None,
                    checkpoint_dir: str | None, download: bool) -> TrainedClassifier:
    """The trained classifier with seeded random weights, or the released checkpoint's (PART A's loader
    fetches, checks strictly and converts it; the head takes its CLIP, prompt and CAL parts)."""
    from .model import build_classifier

    if random_weights:
        return build_classifier(device, True)
    from pathlib import Path

    from .checkpoint import load_trained_state

    state = load_trained_state(checkpoint, Path(checkpoint_dir) if checkpoint_dir else None, download,
                               parts=("clip", "prompt", "cal"))
    return build_classifier(device, False, state, Path(checkpoint).name if checkpoint else "model_final")
