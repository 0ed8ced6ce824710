"""``python -m deop bench --model deop-trained``: the paper's speed claim on this device. The trained model's one
pass (generator, CLIP with the masks inside, CAL, the combination) against the crop baseline on 100 proposals
(generator, one CLIP pass per masked crop, scoring), at the paper's test size (short side 512), as frames per
second beside the paper's 4.37 against 1.11 (3.9x, COCO-Stuff, one GPU), with where the time goes and the
peak memory.

The crops are timed on exactly 100 disjoint masks of the same image (``synthetic_proposals``): a crop's cost
does not depend on its mask's shape (each becomes one 224 px CLIP input), and random weights leave however
many non-empty masks the random generator happens to give. The one pass reads all 100 queries whatever
their masks, as the official model does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..classify import encode_crops, probabilities
from ..pipeline import Segmenter
from ..timing import stopwatch
from .measure import bench_vocabulary, peak_memory, synthetic_image, synthetic_proposals

PAPER = {"deop_fps": 4.37, "simbaseline_fps": 1.11, "ratio": 3.9, "benchmark": "COCO-Stuff", "device": "one GPU"}
SHORT_SIDE = 512
N_PROPOSALS = 100


def _median(values: list[float]) -> float:
    return float(np.median(values))


def trained_record(seg: Segmenter, repeats: int = 3, n_classes: int = 20, n_crops: int = N_PROPOSALS,
                   advance: Callable[[str], None] = lambda desc: None) -> dict[str, Any]:
    """One record: medians over `repeats` (after one warm-up) of each stage, FPS and ratio, peak memory;
    the crops on `n_crops` masks (100, the generator's query count, unless a test asks for fewer)."""
    from ..trained.model import class_probabilities, image_masks, label_map, query_logits, semantic_scores
    from ..trained.run import vocabulary_text

    trained, proposer, device = seg.trained, seg.proposer, seg.device
    image = synthetic_image(round(SHORT_SIDE * 4 / 3))  # 683 x 512: the short side at the test size
    text, _ = vocabulary_text(trained, bench_vocabulary(n_classes))
    crops = synthetic_proposals(image.shape[:2], n_crops)
    opts = seg.config.options
    times: dict[str, list[float]] = {k: [] for k in ("generator", "clip", "cal", "combination", "crops", "scoring")}
    for i in range(repeats + 1):
        t: dict[str, float] = {}
        with torch.inference_mode():
            with stopwatch(t, "generator", device):
                queries = proposer.model.query_masks(image)
            encoded = trained.encode(queries.pixels, queries.logits)
            with stopwatch(t, "combination", device):
                probs = class_probabilities(query_logits(encoded.anchors, text, trained.head.none_embedding()))
                masks = image_masks(queries.logits, queries.padded_size, queries.resized_size)
                label_map(semantic_scores(probs, masks), image.shape[:2])
            with stopwatch(t, "crops", device):
                embeddings = encode_crops(trained.clip_view, image, crops, opts.crop_margin, opts.crop_batch_size)
            with stopwatch(t, "scoring", device):
                probabilities(embeddings, text, opts.logit_scale)
        t.update(encoded.seconds)
        if i:  # the first run warms up
            for k, v in t.items():
                times[k].append(v)
        advance(f"trained model vs crops, run {i + 1}/{repeats + 1}")
    med = {k: _median(v) for k, v in times.items()}
    one_pass = med["generator"] + med["clip"] + med["cal"] + med["combination"]
    crop = med["generator"] + med["crops"] + med["scoring"]
    rss, cuda = peak_memory(device)
    classifier = med["clip"] + med["cal"] + med["combination"]
    return {
        "kind": "trained", "method": "deop-trained vs crop", "device": str(device),
        "torch_threads": torch.get_num_threads(), "random_weights": seg.config.random_weights,
        "image_size": {"height": int(image.shape[0]), "width": int(image.shape[1])},
        "model_input": {"height": int(queries.padded_size[0]), "width": int(queries.padded_size[1])},
        "n_queries": int(len(queries)), "n_crops": len(crops), "n_classes": n_classes, "repeats": repeats,
        "seconds": {k: round(v, 4) for k, v in med.items()},
        "one_pass_seconds": round(one_pass, 4), "crop_seconds": round(crop, 4),
        "one_pass_fps": round(1 / one_pass, 3), "crop_fps": round(1 / crop, 3),
        "ratio": round(crop / one_pass, 2), "classifier_ratio": round((med["crops"] + med["scoring"]) / classifier, 2),
        "paper": PAPER, "peak_rss_mb": round(rss, 1), "cuda_peak_mb": None if cuda is None else round(cuda, 1),
    }


def format_trained(record: dict[str, Any]) -> str:
    s = record["seconds"]
    lines = [
        f"DeOP trained model vs crop baseline on {record['n_crops']} proposals, {record['image_size']['width']}x"
        f"{record['image_size']['height']} image (model input {record['model_input']['width']}x"
        f"{record['model_input']['height']}), {record['device']}, {record['torch_threads']} threads"
        + (", RANDOM WEIGHTS" if record["random_weights"] else ""),
        f"  one pass: {record['one_pass_fps']:.2f} FPS ({record['one_pass_seconds']:.2f} s: generator "
        f"{s['generator']:.2f}, CLIP {s['clip']:.2f}, CAL {s['cal']:.3f}, combination {s['combination']:.3f})",
        f"  crops:    {record['crop_fps']:.2f} FPS ({record['crop_seconds']:.2f} s: generator {s['generator']:.2f}, "
        f"crops {s['crops']:.2f}, scoring {s['scoring']:.4f})",
        f"  ratio {record['ratio']:.2f}x end to end, {record['classifier_ratio']:.2f}x without the generator; "
        f"the paper: {PAPER['deop_fps']} vs {PAPER['simbaseline_fps']} FPS ({PAPER['ratio']}x, {PAPER['benchmark']}, "
        f"{PAPER['device']})",
        f"  peak memory: {record['peak_rss_mb']:.0f} MB RSS"
        + (f", {record['cuda_peak_mb']:.0f} MB CUDA" if record["cuda_peak_mb"] is not None else ""),
    ]
    return "\n".join(lines)
