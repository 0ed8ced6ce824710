"""``python -m deop segment``: images or folders of images to overlays, label PNGs and results JSON.

In a batch, an image that fails (not an image, truncated, too large) gets a one-line error and the
others are still processed; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..arguments import add_model_arguments, add_option_arguments, config_from_args
from ..errors import USER_ERRORS
from ..methods import METHOD_CHOICES, METHODS
from ..models import RANDOM_WEIGHTS_WARNING


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment images or folders of images")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--classes", required=True,
                   help='vocabulary: "cat, dog, grass"; "person: man, woman" adds synonyms; @coco a preset')
    p.add_argument("--method", default="both", choices=list(METHOD_CHOICES),
                   help="; ".join(f"{name}: {m.description}" for name, m in METHODS.items())
                   + "; both: one-pass and crop on the same proposals, compared")
    p.add_argument("--out", default="outputs", help="output folder")
    add_model_arguments(p)
    add_option_arguments(p)
    p.set_defaults(func=run)


def unique_stems(files: Sequence[Path]) -> list[str]:
    """Output stems, made unique so that a/x.png and b/x.png do not overwrite each other."""
    from ..export import stem_of

    seen: dict[str, int] = {}
    out = []
    for f in files:
        stem = stem_of(f.name)
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
    summary = result.comparison_summary()
    if summary and summary.one_pass_won:
        line += f"; one-pass CLIP stage {summary.clip:.1f}x faster than crops"
    elif summary:
        line += f"; crops {1 / summary.clip:.1f}x faster than one pass with only {summary.segments}"
    return line


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..export import save_result
    from ..images import collect_images, load_image
    from ..pipeline import Segmenter
    from ..vocabulary import parse_vocabulary

    vocabulary = parse_vocabulary(args.classes)
    files, errors = collect_images(args.inputs)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if not files:
        return 2
    segmenter = Segmenter(config_from_args(args))
    segmenter.load()
    if segmenter.config.random_weights:
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
