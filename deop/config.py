"""Settings as data: which models to load (SegmenterConfig) and how to run one request (SegmentOptions).

Options are frozen so that they can key the caches: two requests share proposals or features exactly
when the settings those depend on are equal.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

METHODS = ("one-pass", "crop", "both", "dense")


@dataclass(frozen=True)
class ProposalConfig:
    """Segment Anything's automatic mask generator, every option in one place.

    Defaults are the official DeOP demo's (points_per_side=20, min_mask_region_area=100, the rest at
    SAM's defaults) except points_per_batch, 16 instead of SAM's 64 for memory and CPU speed (see
    ``PROPOSAL_PRESETS``); it does not change the masks. On a CPU the mask decoder costs about 0.1-0.2 s
    per point, so points_per_side dominates the run time: see ``PROPOSAL_PRESETS["fast"]``.

    points_per_side: the grid of point prompts is points_per_side x points_per_side.
    points_per_batch: prompts decoded together; larger uses more memory (and is faster on a GPU).
    pred_iou_thresh: drop masks whose predicted IoU is below this (0..1).
    stability_score_thresh: drop masks whose stability under threshold changes is below this (0..1).
    stability_score_offset: how far the threshold is moved when measuring stability.
    box_nms_thresh: IoU above which duplicate masks are suppressed.
    crop_n_layers: extra layers of image crops (each layer re-runs SAM on 4^i crops; slow, better recall).
    crop_nms_thresh: IoU for suppressing duplicates between crops.
    crop_n_points_downscale_factor: fewer points per side in deeper crop layers.
    min_mask_region_area: remove islands and holes smaller than this many pixels (needs OpenCV).
    max_masks: keep at most this many masks, those with the highest predicted IoU (0 = no limit).
    sam_input_size: the square input of SAM's image encoder. 1024 is SAM as trained; 512 runs the same
        weights about 10x faster on a CPU (encoder and per-point decoder), for coarser masks.
    """

    points_per_side: int = 20
    points_per_batch: int = 16
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 100
    max_masks: int = 100
    sam_input_size: int = 1024

    def generator_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``SamAutomaticMaskGenerator`` (everything but our own max_masks)."""
        kwargs = asdict(self)
        kwargs.pop("max_masks")
        kwargs.pop("sam_input_size")
        return kwargs

    def __post_init__(self) -> None:
        if self.points_per_side < 1:
            raise ValueError("points_per_side must be at least 1")
        if self.points_per_batch < 1:
            raise ValueError("points_per_batch must be at least 1")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.sam_input_size < 64 or self.sam_input_size % 16:
            raise ValueError("sam_input_size must be a multiple of 16, at least 64")
        if self.max_masks < 0 or self.min_mask_region_area < 0 or self.crop_n_layers < 0:
            raise ValueError("max_masks, min_mask_region_area and crop_n_layers must not be negative")


PROPOSAL_PRESETS: dict[str, ProposalConfig] = {
    # points_per_batch 16 (the default) in every preset: SAM upsamples each prompt's 3 masks to the full
    # image size per batch, so the batch sets the peak memory (about 0.6 GB less at 16 than at 64 on a
    # 1024 px image), and on a CPU 16 was also faster (fast preset, 1024 px: 7.3-7.8 s against 9.0-9.2 s
    # at 64). On a GPU larger batches pay: --points-per-batch 64.
    "demo": ProposalConfig(),
    # The CPU setting for interactive use: SAM at 512 px (about 10x cheaper encoder, 3x cheaper decoding
    # per point) and a quarter of the demo's point prompts.
    "fast": ProposalConfig(points_per_side=10, sam_input_size=512),
    "quality": ProposalConfig(points_per_side=32, crop_n_layers=1, max_masks=200),
}


@dataclass(frozen=True)
class SegmentOptions:
    """What one request may change without reloading any model.

    max_side: the image is downscaled so that its long side is at most this before anything runs;
        results are mapped back to the input size.
    clip_size: long side of the image given to the one CLIP pass (sides rounded to the patch size).
    severance: patch severance variant, see ``deop.dense_clip.SEVERANCE_VARIANTS``.
    n_severed: how many final blocks are severed (DeOP's generalized severance uses more than one).
    templates: prompt template set, see ``deop.presets.TEMPLATES``.
    none_threshold: a segment whose best class probability is below this is left unlabelled (-1).
    fill_uncovered: label pixels that no proposal covers from the dense per-pixel classification.
    crop_margin: the crop baseline enlarges each mask's box by this fraction on every side.
    crop_batch_size: crops per ``encode_image`` batch.
    logit_scale: CLIP's temperature for the softmax over classes.
    """

    max_side: int = 1024
    clip_size: int = 448
    severance: str = "deop"
    n_severed: int = 1
    templates: str = "segmentation"
    none_threshold: float = 0.0
    fill_uncovered: bool = True
    crop_margin: float = 0.1
    crop_batch_size: int = 32
    logit_scale: float = 100.0
    proposals: ProposalConfig = field(default_factory=ProposalConfig)

    def __post_init__(self) -> None:
        if self.max_side < 32:
            raise ValueError("max_side must be at least 32 pixels")
        if self.clip_size < 32:
            raise ValueError("clip_size must be at least 32 pixels")
        if not 0.0 <= self.none_threshold <= 1.0:
            raise ValueError("none_threshold is a probability between 0 and 1")
        if self.crop_margin < 0 or self.crop_batch_size < 1 or self.n_severed < 1:
            raise ValueError("crop_margin must be >= 0, crop_batch_size and n_severed >= 1")

    def with_overrides(self, **overrides: Any) -> SegmentOptions:
        """A copy with some fields changed; proposal fields may be given flat (points_per_side=8)."""
        own = {f.name for f in fields(self)}
        proposal_keys = {f.name for f in fields(ProposalConfig)}
        unknown = set(overrides) - own - proposal_keys
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
        prop = {k: v for k, v in overrides.items() if k in proposal_keys and k not in own}
        mine = {k: v for k, v in overrides.items() if k in own}
        if prop:
            mine["proposals"] = replace(mine.get("proposals", self.proposals), **prop)
        return replace(self, **mine)


@dataclass(frozen=True)
class SegmenterConfig:
    """Which models to load and where.

    device: "auto" picks CUDA when present, else "cpu"; "cuda", "cuda:1", "mps" and "cpu" work too.
    clip_model / clip_pretrained: an open_clip model name and pretrained tag. OpenAI's ViT-B/16 weights
        need the QuickGELU config, hence the default name.
    sam_kind: the proposal model: SAM "vit_b", "vit_l" or "vit_h", or SAM 2.1 "sam2.1_hiera_t", "_s", "_b+"
        or "_l" (``deop.models.SAM_KINDS``; SAM 2.1 needs the optional sam2 package).
    random_weights: build both models randomly initialised: real shapes and timings, meaningless labels.
    half: run CLIP in float16 on a GPU, CUDA or MPS (ignored on the CPU, where float16 is slow).
    checkpoint_dir: where SAM checkpoints live (default: ``checkpoints/`` beside the package).
    download: fetch missing weights; when False a missing file is an error.
    cache_size: how many images' proposals and features are kept for re-queries.
    options: the default per-request options.
    """

    device: str = "auto"
    clip_model: str = "ViT-B-16-quickgelu"
    clip_pretrained: str = "openai"
    sam_kind: str = "vit_b"
    random_weights: bool = False
    half: bool = False
    checkpoint_dir: str | None = None
    download: bool = True
    cache_size: int = 8
    options: SegmentOptions = field(default_factory=SegmentOptions)
