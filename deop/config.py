"""Settings as data: which models to load (``SegmenterConfig``) and how to run one request
(``SegmentOptions`` and its ``ProposalConfig``).

Each setting is described once, here, by its field: default, help, range, choices, the CLI flag and
environment variable that set it, the app widget that shows it and the cached stage it changes. The CLI
flags (``deop.arguments``), the app's widgets and its input checks (``app.py``), and the validation
below are all generated from that description, so adding an option is one field.

Options are frozen so that they can key the caches: two requests share proposals or features exactly
when the settings those depend on are equal. Nothing here imports torch, so that ``python -m deop --help``
and ``import deop`` stay fast.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cache
from typing import Any

from .errors import OptionError, UnknownOptionError

# The cached stages, in the order a request runs them; an option's ``stage`` is the first one it changes,
# so an edit of a "labels" option re-runs from the cache, and anything earlier needs new proposals or
# features.
STAGES_IN_ORDER = ("image", "proposals", "features", "crops", "labels")


@dataclass(frozen=True)
class Widget:
    """How the app shows an option. ``kind`` is "slider", "dropdown" or "checkbox"; the app accepts only
    values in [minimum, maximum] (the slider's range) however a request reaches it, so that an API call
    cannot ask for more than the page offers."""

    kind: str
    label: str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    info: str | None = None


@dataclass(frozen=True)
class OptionMeta:
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: Callable[[], Sequence[str]] | None = None
    flag: str | None = None  # None: "--" + the name with dashes; "" for none
    env: str | None = None  # read when the flag is not given (flag, then environment, then default)
    widget: Widget | None = None
    stage: str | None = None


def option(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field that carries its description (``OptionMeta``)."""
    return field(default=default, metadata={"option": OptionMeta(help=help, **meta)})


@dataclass(frozen=True)
class Option:
    """One described setting, as the CLI, the app and validation see it."""

    name: str
    type: str  # "int", "float", "bool", "str" or "path" (a str or None)
    default: Any
    meta: OptionMeta

    @property
    def flag(self) -> str | None:
        if self.meta.flag == "":
            return None
        return self.meta.flag or "--" + self.name.replace("_", "-")

    @property
    def choices(self) -> list[str] | None:
        return list(self.meta.choices()) if self.meta.choices else None

    def check(self, value: Any, *, app: bool = False) -> Any:
        """`value` if it is of this option's type and within its range (the widget's range with `app`),
        else an ``OptionError`` naming the option; a whole float for an int option and an int for a float
        option are taken as the number they are."""
        value = self._typed(value)
        lo, hi = self.meta.minimum, self.meta.maximum
        if app and self.meta.widget is not None:
            lo = self.meta.widget.minimum if self.meta.widget.minimum is not None else lo
            hi = self.meta.widget.maximum if self.meta.widget.maximum is not None else hi
        if self.type in ("int", "float") and ((lo is not None and value < lo) or (hi is not None and value > hi)):
            if lo is not None and hi is not None:
                span = f"between {lo:g} and {hi:g}"
            else:
                span = f"at least {lo:g}" if lo is not None else f"at most {hi:g}"
            raise OptionError(f"{self.name} must be {span}, got {value:g}")
        choices = self.choices
        if choices is not None and value not in choices:
            raise OptionError(f"{self.name} must be one of {', '.join(choices)}; got {value!r}")
        return value

    def _typed(self, value: Any) -> Any:
        kind = self.type
        if kind == "bool":
            if isinstance(value, bool):
                return value
            raise OptionError(f"{self.name} must be true or false, got {value!r}")
        if kind == "path":
            if value is None or isinstance(value, str):
                return value
            raise OptionError(f"{self.name} must be a path or empty, got {value!r}")
        if kind == "str":
            if isinstance(value, str):
                return value
            raise OptionError(f"{self.name} must be a text, got {value!r}")
        if not is_number(value):
            what = "a whole number" if kind == "int" else "a number"
            raise OptionError(f"{self.name} must be {what}, got {value!r}")
        if kind == "int":
            if isinstance(value, float):
                if not value.is_integer():
                    raise OptionError(f"{self.name} must be a whole number, got {value!r}")
                return int(value)
            return value
        return float(value)


def is_number(value: Any) -> bool:
    """An int or float a request may carry: not a bool, not NaN or Infinity (valid JSON to Python), and no
    integer past float's exact range (it could not be compared with a bound or shown)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) if isinstance(value, float) else abs(value) <= 2**53


_TYPES = {int: "int", float: "float", bool: "bool", str: "str"}


@cache
def options_of(cls: type) -> tuple[Option, ...]:
    """The described fields of a settings dataclass, in field order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        meta = f.metadata.get("option")
        if meta is None:
            continue
        hint = hints[f.name]
        kind = _TYPES.get(hint, "path" if hint == (str | None) else None)
        if kind is None:
            raise TypeError(f"option {cls.__name__}.{f.name} has an unsupported type {hint}")
        out.append(Option(f.name, kind, f.default, meta))
    return tuple(out)


def _validate(obj: Any) -> None:
    """Check every described field of a frozen dataclass; numbers are stored as their option's type."""
    for opt in options_of(type(obj)):
        object.__setattr__(obj, opt.name, opt.check(getattr(obj, opt.name)))


def _severance_names() -> list[str]:
    from .clip.severance import SEVERANCE_VARIANTS

    return list(SEVERANCE_VARIANTS)


def _template_names() -> list[str]:
    from .presets import TEMPLATES

    return list(TEMPLATES)


# The models a Segmenter can run: the training-free path (a SAM-family proposal model, a severance variant)
# or the paper's trained model (its MaskFormer generator, learned prompts, mask-guided severance and CAL).
TRAINED_MODEL = "deop-trained"
MODEL_NAMES = ("training-free", TRAINED_MODEL)


def _model_names() -> list[str]:
    return list(MODEL_NAMES)


def _precisions() -> list[str]:
    from .precision import PRECISIONS

    return list(PRECISIONS)


def _proposer_names() -> list[str]:
    from .proposers import PROPOSERS

    return list(PROPOSERS)


@dataclass(frozen=True)
class ProposalConfig:
    """Segment Anything's automatic mask generator (SAM, SAM 2.1 and MobileSAM share it), every option in
    one place.

    Defaults are the official DeOP demo's (points_per_side=20, min_mask_region_area=100, the rest at
    SAM's defaults) except points_per_batch, 16 instead of SAM's 64 for memory and CPU speed (see
    ``PROPOSAL_PRESETS``); it does not change the masks. On a CPU the mask decoder costs about 0.1-0.2 s
    per point, so points_per_side dominates the run time: see ``PROPOSAL_PRESETS["fast"]``.
    """

    points_per_side: int = option(
        20, "SAM point grid side: N x N point prompts; the decoder runs once per point", minimum=1,
        widget=Widget("slider", "SAM points per side", 4, 48, 1), stage="proposals")
    points_per_batch: int = option(
        16, "SAM prompts decoded together; more uses more memory (presets: 16, best on a CPU; try 64 on a GPU); "
        "the masks do not change", minimum=1, stage="proposals")
    pred_iou_thresh: float = option(
        0.88, "drop masks whose predicted IoU is below this (0..1; demo 0.88)", minimum=0.0, maximum=1.0,
        widget=Widget("slider", "SAM predicted IoU threshold", 0, 1), stage="proposals")
    stability_score_thresh: float = option(
        0.95, "drop masks unstable under threshold shifts (0..1; demo 0.95)", minimum=0.0, maximum=1.0,
        widget=Widget("slider", "SAM stability threshold", 0, 1), stage="proposals")
    stability_score_offset: float = option(
        1.0, "how far the mask threshold is moved when measuring stability", minimum=0.0, stage="proposals")
    box_nms_thresh: float = option(
        0.7, "box IoU above which duplicate masks are suppressed (0..1; demo 0.7; 1 keeps every mask)",
        minimum=0.0, maximum=1.0, widget=Widget("slider", "SAM box NMS threshold", 0, 1), stage="proposals")
    crop_n_layers: int = option(
        0, "extra layers of image crops: SAM runs again on 4^i crops; better recall on small objects, each "
        "layer slower", minimum=0, stage="proposals")
    crop_nms_thresh: float = option(
        0.7, "box IoU for suppressing duplicates between crops (0..1)", minimum=0.0, maximum=1.0, stage="proposals")
    crop_n_points_downscale_factor: int = option(
        1, "fewer points per side in deeper crop layers (divided by this per layer)", minimum=1, stage="proposals")
    min_mask_region_area: int = option(
        100, "remove islands and holes smaller than this many pixels (demo 100; needs OpenCV)", minimum=0,
        widget=Widget("slider", "SAM min mask region area (px)", 0, 2000, 10), stage="proposals")
    max_masks: int = option(
        100, "keep at most N masks, those with the highest predicted IoU (0 = no limit)", minimum=0,
        widget=Widget("slider", "Max masks", 1, 300, 1), stage="proposals")
    sam_input_size: int = option(
        1024, "SAM encoder input side: 1024 as trained; 448 (the fast preset's: a whole number of SAM's attention "
        "windows) is about 8x cheaper on a CPU, for coarser masks; a multiple of 16 (of 32 for SAM 2.1); MobileSAM "
        "always runs at 1024", minimum=64, stage="proposals")

    def __post_init__(self) -> None:
        _validate(self)
        if self.sam_input_size % 16:
            raise OptionError(f"sam_input_size must be a multiple of 16, got {self.sam_input_size}")

    def generator_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the stock automatic mask generators (everything but our own options)."""
        kwargs = asdict(self)
        kwargs.pop("max_masks")
        kwargs.pop("sam_input_size")
        return kwargs


PROPOSAL_PRESETS: dict[str, ProposalConfig] = {
    # points_per_batch 16 (the default) in every preset: SAM upsamples each prompt's 3 masks to the full
    # image size per batch, so the batch sets the peak memory (about 0.6 GB less at 16 than at 64 on a
    # 1024 px image), and on a CPU 16 was also faster (fast preset, 1024 px: 7.3-7.8 s against 9.0-9.2 s
    # at 64). On a GPU larger batches pay: --points-per-batch 64.
    "demo": ProposalConfig(),
    # The CPU setting for interactive use: a quarter of the demo's point prompts, and SAM's encoder at 448 px:
    # SAM's ViT attends in 14 x 14 windows of its 16 px patches, and 448 px is exactly 2 x 2 windows (28
    # patches a side) where 512 px (32) is padded to 42, so 448 costs 0.8 s against 1.4 s at 512 (random
    # vit_b, this project's 2-core CPU) and its decoder a quarter less per point, for masks from an input
    # 12 % smaller a side. SAM 2.1 takes it too (a multiple of 32); MobileSAM runs at 1024 only.
    "fast": ProposalConfig(points_per_side=10, sam_input_size=448),
    "quality": ProposalConfig(points_per_side=32, crop_n_layers=1, max_masks=200),
}


@dataclass(frozen=True)
class SegmentOptions:
    """What one request may change without reloading any model."""

    max_side: int = option(
        1024, "downscale so the long side is at most N before anything runs; results are mapped back to the "
        "input size", minimum=32, widget=Widget("slider", "Max image side", 128, 2048, 32), stage="image")
    clip_size: int = option(
        448, "long side of the image given to the one CLIP pass (sides rounded to the patch size)", minimum=32,
        widget=Widget("slider", "CLIP input long side", 224, 1024, 16), stage="features")
    severance: str = option(
        "deop", "how the last block(s) are changed: DeOP's patch severance or a related method",
        choices=_severance_names, widget=Widget("dropdown", "Patch severance variant"), stage="features")
    n_severed: int = option(
        1, "severed final blocks, chained: each of the last N blocks is severed in turn (DeOP's generalized "
        "severance); ClearCLIP's multi-layer form differs: it sums the modified attention of the last N blocks",
        minimum=1,
        widget=Widget("slider", "Severed final blocks", 1, 4, 1), stage="features")
    templates: str = option(
        "segmentation", "prompt templates averaged per class name (single is about 10x cheaper to encode)",
        choices=_template_names, widget=Widget("dropdown", "Prompt templates"), stage="labels")
    none_threshold: float = option(
        0.0, '"none of these": segments whose best probability is below this stay unlabelled', minimum=0.0,
        maximum=1.0, flag="--threshold", widget=Widget("slider", '"None of these" threshold', 0, 1), stage="labels")
    fill_uncovered: bool = option(
        True, "leave pixels no proposal covers unlabelled", flag="--no-fill",
        widget=Widget("checkbox", "Fill uncovered pixels from the dense map"), stage="labels")
    crop_margin: float = option(
        0.1, "the crop baseline enlarges each mask's box by this fraction on every side", minimum=0.0,
        stage="crops")
    crop_batch_size: int = option(
        0, "crops per CLIP encode_image batch; 0 picks by device: 8 on a CPU (a batch's activations then stay in "
        "cache), 32 on a GPU", minimum=0, stage="crops")
    logit_scale: float = option(100.0, "CLIP's temperature for the softmax over classes", minimum=1e-6,
                                stage="labels")
    proposals: ProposalConfig = field(default_factory=ProposalConfig)

    def __post_init__(self) -> None:
        _validate(self)
        if not isinstance(self.proposals, ProposalConfig):
            raise OptionError(f"proposals must be a ProposalConfig, got {type(self.proposals).__name__}")

    def with_overrides(self, **overrides: Any) -> SegmentOptions:
        """A copy with some fields changed; proposal fields may be given flat (points_per_side=8)."""
        own = {f.name for f in fields(self)}
        proposal_keys = {f.name for f in fields(ProposalConfig)}
        unknown = set(overrides) - own - proposal_keys
        if unknown:
            raise UnknownOptionError(f"unknown option(s): {', '.join(sorted(unknown))}")
        prop = {k: v for k, v in overrides.items() if k in proposal_keys and k not in own}
        mine = {k: v for k, v in overrides.items() if k in own}
        if prop:
            mine["proposals"] = replace(mine.get("proposals", self.proposals), **prop)
        return replace(self, **mine)


# The options the app offers, in the order of the /segment API's inputs after image, vocabulary and method.
APP_OPTIONS = ("points_per_side", "pred_iou_thresh", "stability_score_thresh", "max_side", "severance",
               "none_threshold", "fill_uncovered", "templates", "clip_size", "n_severed", "max_masks",
               "min_mask_region_area", "box_nms_thresh")


def request_options() -> dict[str, Option]:
    """Every per-request option by name, a request's own and its proposals'."""
    return {o.name: o for o in (*options_of(SegmentOptions), *options_of(ProposalConfig))}


def option_value(options: SegmentOptions, name: str) -> Any:
    """A request option's value, whether it belongs to the request or to its proposals."""
    return getattr(options, name) if hasattr(options, name) else getattr(options.proposals, name)


@dataclass(frozen=True)
class SegmenterConfig:
    """Which models to load and where."""

    device: str = option("auto", "auto (CUDA if present, then Apple's MPS, else the CPU), cpu, cuda, cuda:N or mps",
                         env="DEOP_DEVICE")
    clip_model: str = option("ViT-B-16-quickgelu", "open_clip model name (OpenAI's ViT-B/16 weights need the "
                             "QuickGELU config, hence the default)")
    clip_pretrained: str = option("openai", "open_clip pretrained tag")
    sam_kind: str = option("vit_b", "proposal model (deop.proposers.PROPOSERS): SAM vit_b/l/h, MobileSAM "
                           "mobile_sam, or SAM 2.1 sam2.1_hiera_t/s/b+/l (the optional sam2 package)",
                           choices=_proposer_names, flag="--sam", env="DEOP_SAM")
    random_weights: bool = option(False, "randomly initialised models: no download, real timings, meaningless "
                                  "labels", env="DEOP_RANDOM_WEIGHTS")
    precision: str = option(
        "auto", "number format of both models (CLIP and the proposal model): float32 is the exact reference; "
        "bfloat16/float16 run them under autocast; auto picks per device what measured faster at load (bfloat16 "
        "on a CPU with native bfloat16, float32 on one without; bfloat16 on a CUDA GPU that has it); "
        "float16 replaces the former --half", choices=_precisions, env="DEOP_PRECISION")
    checkpoint_dir: str | None = option(None, "where SAM checkpoints live (default: checkpoints/ beside the "
                                        "package)", env="DEOP_CHECKPOINT_DIR")
    download: bool = option(True, "fail instead of downloading missing weights", flag="--no-download")
    cache_size: int = option(8, "how many images' proposals and features are kept for re-queries", minimum=0)
    model: str = option("training-free", "training-free: a SAM-family proposal model (--sam) and one dense CLIP "
                        "pass with a severance variant (--severance); deop-trained: the paper's trained model "
                        "(its own 100-query mask generator, learned prompts, mask-guided severance and CAL, from "
                        "the released model_final.pth; --sam and --severance do not apply)",
                        choices=_model_names, env="DEOP_MODEL")
    deop_checkpoint: str | None = option(None, "the released DeOP model_final.pth (or its converted .safetensors) "
                                         "for --model deop-trained; default: downloaded to the checkpoint folder",
                                         env="DEOP_CHECKPOINT")
    options: SegmentOptions = field(default_factory=SegmentOptions)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def trained(self) -> bool:
        return self.model == TRAINED_MODEL

    @property
    def proposal_model(self) -> str:
        """The proposal model that runs: the trained model's own generator, else ``sam_kind``."""
        return TRAINED_MODEL if self.trained else self.sam_kind

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class EngineConfig:
    """Where ``eval`` and ``segment`` run: this process, or Ray Data (a pool of model actors, each loading the
    models once, fed by CPU tasks that decode the images), on a local Ray or on a cluster. Ray is optional:
    ``pip install "ray[data]>=2.60,<3"``."""

    engine: str = option("local", "local: this process; ray: a pool of model actors on Ray (a local Ray, or the "
                         "cluster at --ray-address); needs pip install 'ray[data]'", choices=lambda: ENGINES,
                         env="DEOP_ENGINE")
    ray_address: str | None = option(None, "the Ray cluster to run on (ray://host:10001 or host:6379; 'auto' for "
                                     "the one started on this machine with ray start); default: a local Ray for "
                                     "this run", env="RAY_ADDRESS")
    workers: int = option(1, "model actors in the Ray pool (each loads the models once)", minimum=1)
    gpus_per_worker: float = option(0.0, "GPUs each Ray actor reserves; fractions let actors share a GPU (0.5: two "
                                    "per GPU)", minimum=0.0)
    batch_size: int = option(4, "images per Ray actor call (its confusion matrices are summed per batch)", minimum=1)

    def __post_init__(self) -> None:
        _validate(self)
