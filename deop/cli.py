"""Command line: ``python -m deop segment|bench|eval``.

Errors a user can fix (a bad image, an empty vocabulary, missing weights) end in one line on stderr
and a non-zero exit, never a traceback; in a batch the other images are still processed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path

from .config import METHODS, PROPOSAL_PRESETS, ProposalConfig, SegmenterConfig, SegmentOptions
from .dense_clip import SEVERANCE_VARIANTS
from .errors import USER_ERRORS
from .models import RANDOM_WEIGHTS_WARNING, SAM_KINDS
from .presets import TEMPLATES

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Model and device flags shared by every subcommand (and the app)."""
    d = SegmenterConfig()
    p.add_argument("--device", default=d.device, help="auto (CUDA if present), cpu, cuda, cuda:N or mps")
    p.add_argument("--random-weights", action="store_true",
                   help="randomly initialised models: no download, real timings, meaningless labels")
    p.add_argument("--clip-model", default=d.clip_model, help="open_clip model name")
    p.add_argument("--clip-pretrained", default=d.clip_pretrained, help="open_clip pretrained tag")
    p.add_argument("--sam", default=d.sam_kind, choices=list(SAM_KINDS),
                   help="proposal model: SAM vit_b/l/h, or SAM 2.1 sam2.1_hiera_t/s/b+/l (optional sam2 package)")
    p.add_argument("--checkpoint-dir", default=None, help="where SAM checkpoints live (default: checkpoints/)")
    p.add_argument("--half", action="store_true", help="float16 CLIP on a GPU (CUDA or MPS)")


def add_option_arguments(p: argparse.ArgumentParser) -> None:
    o, demo = SegmentOptions(), PROPOSAL_PRESETS["demo"]
    p.add_argument("--preset", choices=list(PROPOSAL_PRESETS), default="demo",
                   help="proposal settings: demo (DeOP demo's), fast (CPU), quality")
    p.add_argument("--points-per-side", type=int, default=None, help="SAM point grid side")
    p.add_argument("--points-per-batch", type=int, default=None,
                   help="SAM prompts decoded together (presets: 16, best on a CPU; try 64 on a GPU)")
    p.add_argument("--pred-iou-thresh", type=float, default=None,
                   help=f"drop masks whose predicted IoU is below this (0..1; demo {demo.pred_iou_thresh})")
    p.add_argument("--stability-score-thresh", type=float, default=None,
                   help=f"drop masks unstable under threshold shifts (0..1; demo {demo.stability_score_thresh})")
    p.add_argument("--box-nms-thresh", type=float, default=None,
                   help=f"box IoU above which duplicate masks are suppressed (0..1; demo {demo.box_nms_thresh})")
    p.add_argument("--min-mask-region-area", type=int, default=None,
                   help=f"remove islands and holes smaller than this many pixels (demo {demo.min_mask_region_area})")
    p.add_argument("--crop-n-layers", type=int, default=None,
                   help="extra layers of image crops: better recall on small objects, each layer slower")
    p.add_argument("--max-masks", type=int, default=None,
                   help="keep at most N masks, those with the highest predicted IoU (0 = no limit)")
    p.add_argument("--sam-input-size", type=int, default=None,
                   help="SAM encoder input (1024 as trained, 512 fast; a multiple of 32 for SAM 2.1)")
    p.add_argument("--max-side", type=int, default=o.max_side, help="downscale so the long side is at most N")
    p.add_argument("--clip-size", type=int, default=o.clip_size, help="long side of the one CLIP pass")
    p.add_argument("--severance", default=o.severance, choices=list(SEVERANCE_VARIANTS),
                   help="how the last block(s) are changed: DeOP's patch severance or a related method")
    p.add_argument("--n-severed", type=int, default=o.n_severed, help="severed final blocks")
    p.add_argument("--templates", default=o.templates, choices=list(TEMPLATES),
                   help="prompt templates averaged per class name (single is about 10x cheaper to encode)")
    p.add_argument("--threshold", type=float, default=o.none_threshold,
                   help='"none of these": segments whose best probability is below this stay unlabelled')
    p.add_argument("--no-fill", action="store_true", help="leave pixels no proposal covers unlabelled")


def config_from_args(args: argparse.Namespace) -> SegmenterConfig:
    return SegmenterConfig(device=args.device, clip_model=args.clip_model, clip_pretrained=args.clip_pretrained,
                           sam_kind=args.sam, random_weights=args.random_weights, half=args.half,
                           checkpoint_dir=args.checkpoint_dir, options=options_from_args(args))


def options_from_args(args: argparse.Namespace) -> SegmentOptions:
    proposals = PROPOSAL_PRESETS[args.preset]
    if getattr(args, "random_weights", False):
        proposals = random_weight_proposals(proposals)
    # Every ProposalConfig field that has a flag (add_option_arguments), so a new flag cannot be ignored here.
    flat = {f.name: getattr(args, f.name) for f in fields(ProposalConfig) if getattr(args, f.name, None) is not None}
    return SegmentOptions(proposals=proposals).with_overrides(
        max_side=args.max_side, clip_size=args.clip_size, severance=args.severance, n_severed=args.n_severed,
        templates=args.templates, none_threshold=args.threshold, fill_uncovered=not args.no_fill, **flat)


def random_weight_proposals(config: ProposalConfig) -> ProposalConfig:
    """A random SAM's quality scores are noise that the default thresholds reject entirely (no masks at
    all), so random-weight runs, which exist to show shapes and timings, keep every mask instead.
    Explicit --pred-iou-thresh / --stability-score-thresh flags still win."""
    return replace(config, pred_iou_thresh=0.0, stability_score_thresh=0.0)


def collect_images(inputs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Image files from files and folders (folders non-recursive, sorted), and errors for missing paths."""
    files, errors = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                errors.append(f"{path}: no image files in this folder")
            files += found
        elif path.exists():
            files.append(path)
        else:
            errors.append(f"{path}: no such file or folder")
    return files, errors


def unique_stems(files: Sequence[Path]) -> list[str]:
    """Output stems, made unique so that a/x.png and b/x.png do not overwrite each other."""
    from .export import safe_stem

    seen: dict[str, int] = {}
    out = []
    for f in files:
        stem = safe_stem(f.name)
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        out.append(stem if n == 0 else f"{stem}_{n}")
    return out


def timing_line(result) -> str:
    parts = []
    for name, m in result.methods.items():
        t = m.timings
        parts.append(f"{name}: {t['total']:.2f}s (proposals {t['proposals']:.2f}, image {t['image_encoding']:.2f},"
                     f" text {t['text_encoding']:.2f}, classify {t['classification']:.2f})")
    line = "; ".join(parts)
    speedup = result.speedup("clip")
    if speedup and speedup >= 1:
        line += f"; one-pass CLIP stage {speedup:.1f}x faster than crops"
    elif speedup:
        n = len(result.methods["crop"].segments)
        line += f"; crops {1 / speedup:.1f}x faster than one pass with only {n} segment{'' if n == 1 else 's'}"
    return line


def cmd_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .export import save_result
    from .images import load_image
    from .segmenter import Segmenter
    from .vocabulary import parse_vocabulary

    vocabulary = parse_vocabulary(args.classes)
    files, errors = collect_images(args.inputs)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if not files:
        return 2
    segmenter = Segmenter(config_from_args(args))
    segmenter.load()
    if args.random_weights:
        print(f"WARNING: {RANDOM_WEIGHTS_WARNING}", file=sys.stderr)
    out_dir = Path(args.out)
    failed = len(errors)
    bar = tqdm(list(zip(files, unique_stems(files))), desc="segmenting", unit="image", disable=len(files) < 2)
    for path, stem in bar:
        try:
            image = load_image(path)
            result = segmenter.segment(image, vocabulary, method=args.method)
            written = save_result(image, result, out_dir, stem)
        except USER_ERRORS as exc:
            failed += 1
            tqdm.write(f"error: {path}: {exc}", file=sys.stderr)
            continue
        tqdm.write(f"{path} -> {written['overlay']}  [{timing_line(result)}]")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deop", description="DeOP open-vocabulary segmentation")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment images or folders of images")
    seg.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    seg.add_argument("--classes", required=True,
                     help='vocabulary: "cat, dog, grass"; "person: man, woman" adds synonyms; @coco a preset')
    seg.add_argument("--method", default="both", choices=list(METHODS),
                     help="one-pass (DeOP), crop (baseline), both (compared), dense (per-pixel, no SAM)")
    seg.add_argument("--out", default="outputs", help="output folder")
    add_model_arguments(seg)
    add_option_arguments(seg)
    seg.set_defaults(func=cmd_segment)

    from . import app_bench, bench, evaluate

    bench.add_parser(sub)
    app_bench.add_parser(sub)
    evaluate.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
