"""DeOP's own trained mask generator (MaskFormer, ResNet-101c, 100 queries) as a proposal model.

Why have it: it is the generator the paper's tables were measured with, and the trained classifier needs
its 100 query masks (their logits guide CLIP's last block and anchor the classification decoder), so its
proposals carry them (``MaskSet.queries``, ``Proposals.queries``) and say which query each segment came from
(``Proposals.source``).

What it returns: every query's sigmoid mask at the image's size (``QueryMasks.probabilities``, the official
mapping) thresholded at 0.5, the threshold the official code binarises MaskFormer's proposals with when it
crops them for CLIP (``MASK_THR`` 0.5 in ``zero_shot_maskformer_R50_bs32_60k.yaml``, used by
``MaskFormerClipAdapter._preprocess_image``); the trained model's own inference uses the soft masks and
needs no threshold. Each mask's score (its ``predicted_iou`` slot) is the mean sigmoid inside the binary
mask, its confidence; the generator's class head is not used by the trained model, so it gives no score.
``max_masks`` keeps the best by that score; SAM's generator settings (points, thresholds, small-region
cleanup) do not apply. The network runs at the official test size only (short side 512, long side at
most 2560), whatever ``sam_input_size`` says.

It has no prompt encoder: a click cannot add a segment (``prompter`` is None, and ``Proposer.point_mask``
says so). Weights: the released checkpoint's generator part (``deop.trained.checkpoint``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OptionError
from .base import MaskSet, ProposerFamily, ProposerSpec

MASK_THRESHOLD = 0.5
CHUNK = 10  # queries binarised at once: 10 full-size float masks of a 1024 px image are 40 MB


class DeopTrainedFamily(ProposerFamily):
    name = "deop-trained"
    package = "torch"  # plain PyTorch: nothing beyond the package's own dependencies
    install_hint = "DeOP's trained generator needs torch"
    point_prompts = False  # 100 learned queries, no prompt encoder

    def build(self, spec: ProposerSpec, random_weights: bool, checkpoint_dir: Path | None, download: bool,
              checkpoint: str | Path | None = None) -> Any:
        """`checkpoint`: a model_final.pth the user placed (the ``--deop-checkpoint`` setting); else the one
        in the checkpoint folder, downloaded if allowed."""
        from ..trained.generator import build_generator
        from ..weights import seeded_init

        with seeded_init():
            model = build_generator()
        if not random_weights:
            from ..trained.checkpoint import load_trained_state
            from ..trained.keymap import part_state

            state = load_trained_state(checkpoint, checkpoint_dir, download, parts=("generator",))
            model.load_state_dict(part_state(state, "generator"))  # shapes and names were checked strictly
        return model.eval().requires_grad_(False)

    def input_size(self, model: Any) -> int:
        return model.short_side

    def at_input_size(self, model: Any, size: int) -> Any:
        if size != model.short_side:
            raise OptionError(f"DeOP's trained generator runs at its test size (short side {model.short_side} px) "
                              f"only, not {size}")
        return model

    def generate(self, model: Any, image: np.ndarray, config: Any, deadline: Any = None) -> MaskSet:
        import torch

        if deadline is not None:
            deadline.check("mask proposals")
        start = time.perf_counter()
        queries = model.query_masks(image)
        if queries.logits.is_cuda:
            torch.cuda.synchronize(queries.logits.device)
        seconds = time.perf_counter() - start
        masks = binarise(queries)
        masks.network_seconds = seconds
        return masks

    def weights_readme(self, spec: ProposerSpec) -> str:
        from ..trained.checkpoint import CHECKPOINT_URL, CONVERTED, FILENAME, NO_CHECKSUM

        return (f"\n## {spec.title} (`--model {spec.name}`)\n\n"
                f"- file: `{FILENAME}` (the authors' `model_final.pth`, a detectron2 checkpoint of about 0.9 GB; "
                f"{NO_CHECKSUM}: its structure is checked strictly and its SHA-256 printed)\n"
                f"- fetched: on first use with gdown from the authors' Google Drive into this folder, then converted "
                f"once to `{CONVERTED}` beside it, which later runs read\n"
                f"- by hand: open {CHECKPOINT_URL} in a browser, save the file as `checkpoints/{FILENAME}` (or give "
                f"its path with `--deop-checkpoint` / `DEOP_CHECKPOINT`)\n")

    def stock_generator(self, model: Any, config: Any) -> Any:
        raise OptionError("DeOP's trained generator has no stock automatic generator to compare with (the "
                          "official one needs detectron2)")


def binarise(queries: Any, threshold: float = MASK_THRESHOLD) -> MaskSet:
    """Every query's mask (probability > `threshold` at the image's size) as a MaskSet in query order, its
    score the mean probability inside it (0 for an empty mask), the query masks attached."""
    from .amg import tight_crop

    n, (h, w) = len(queries), queries.image_size
    boxes = np.zeros((n, 4), dtype=np.int64)
    scores = np.zeros(n, dtype=np.float32)
    areas = np.zeros(n, dtype=np.int64)
    crops = []
    for lo in range(0, n, CHUNK):
        prob = queries.probabilities(index=slice(lo, lo + CHUNK)).float()
        binary = prob > threshold
        count = binary.sum(dim=(1, 2))
        mean = (prob * binary).sum(dim=(1, 2)) / count.clamp(min=1)
        binary = binary.cpu().numpy()
        for j in range(binary.shape[0]):
            crop, box = tight_crop(binary[j])
            crops.append(crop)
            boxes[lo + j] = box
        scores[lo: lo + binary.shape[0]] = mean.cpu().numpy()
        areas[lo: lo + binary.shape[0]] = count.cpu().numpy()
    crop_boxes = np.tile(np.array([0, 0, w, h], dtype=np.int64), (n, 1))
    return MaskSet((h, w), boxes, crops, scores, np.zeros(n, dtype=np.float32), np.zeros((n, 2)), crop_boxes,
                   areas, queries=queries)


DEOP_TRAINED = DeopTrainedFamily()

SPECS = (
    # weights=None: not a Checkpoint/HubCheckpoint (those need a direct URL and a published checksum); the
    # family's build reads the released file through deop.trained.checkpoint instead.
    ProposerSpec("deop-trained", "DeOP's trained generator (MaskFormer R101c, 100 queries)", DEOP_TRAINED,
                 {}, None, in_app=True, fixed_input_size=512,
                 description="the mask generator DeOP was trained and evaluated with (MaskFormer, ResNet-101c, "
                             "100 learned queries; weights from the authors' model_final.pth)"),
)
