"""``python -m deop segment``: images or folders of images to overlays, label PNGs and results JSON.

In a batch, an image that fails (not an image, truncated, too large) gets a one-line error and the
others are still processed; the exit code is then 1. ``--engine ray`` runs the batch on a pool of Ray
actors (``deop.engine``) that write the same files into --out (a folder every node can write);
``--resume`` skips the images whose outputs are all there already (their JSON is written last, whole), so
a killed run continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..arguments import (
    add_engine_arguments,
    add_model_arguments,
    add_option_arguments,
    config_from_args,
    engine_from_args,
)
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
    p.add_argument("--resume", action="store_true",
                   help="skip the images whose outputs in --out are complete (a killed run continues)")
    add_model_arguments(p)
    add_option_arguments(p)
    add_engine_arguments(p)
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


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..export import outputs_complete
    from ..images import collect_images
    from ..methods import methods_of
    from ..vocabulary import parse_vocabulary

    vocabulary = parse_vocabulary(args.classes)
    engine = engine_from_args(args)
    config = config_from_args(args)
    files, errors = collect_images(args.inputs)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if not files:
        return 2
    out_dir = Path(args.out)
    items = list(zip(files, unique_stems(files)))
    if args.resume:
        names = [m.name for m in methods_of(args.method, config.model)]
        todo = [(f, stem) for f, stem in items if not outputs_complete(out_dir, stem, names)]
        print(f"resume: {len(items) - len(todo)} of {len(items)} image(s) already done in {out_dir}", file=sys.stderr)
        items = todo
    if config.random_weights:
        print(f"WARNING: {RANDOM_WEIGHTS_WARNING}", file=sys.stderr)
    failed = len(errors)
    bar = tqdm(total=len(items), desc="segmenting", unit="image", disable=len(items) < 2)

    def report(line: str, error: str) -> None:
        """Every image's outcome, from either engine: the one place failures are counted."""
        nonlocal failed
        bar.update()
        if error:
            failed += 1
            tqdm.write(f"error: {error}", file=sys.stderr)
        else:
            tqdm.write(line)

    if items and engine.engine == "ray":  # nothing left (a finished --resume): no Ray started
        from ..engine import segment_ray

        segment_ray(config, vocabulary, args.method, out_dir, items, engine, report)
    elif items:
        from ..engine import segment_one
        from ..pipeline import Segmenter

        segmenter = Segmenter(config)
        segmenter.load()
        for path, stem in items:
            report(*segment_one(segmenter, vocabulary, args.method, out_dir, str(path), stem, None))
    bar.close()
    return 1 if failed else 0
