"""``python -m deop eval``: mIoU, per-class IoU and pixel accuracy on a folder dataset, per method (the
dataset layout and scoring rules are ``deop.evaluation``'s)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..arguments import add_model_arguments, add_option_arguments, config_from_args
from ..methods import METHOD_CHOICES, RUNS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="mIoU, per-class IoU and pixel accuracy on a folder dataset")
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--labels", required=True, help="folder of label PNGs (class indices, 255 = ignore), same stems")
    p.add_argument("--classes", required=True, help="text file, one class per line in index order")
    p.add_argument("--method", default="both", choices=list(METHOD_CHOICES))
    p.add_argument("--json", default=None, help="write the report as JSON here")
    p.add_argument("--markdown", default=None, help="write the report as Markdown here")
    add_model_arguments(p)
    add_option_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..evaluation import evaluate, find_pairs, read_classes, report, segmenter_predictor
    from ..evaluation import markdown as to_markdown
    from ..pipeline import Segmenter

    vocabulary = read_classes(args.classes)
    pairs, warnings = find_pairs(args.images, args.labels)
    for w in warnings:
        print(f"warning: {w}")
    segmenter = Segmenter(config_from_args(args))
    segmenter.load()
    methods = list(RUNS[args.method])
    scores = evaluate(pairs, vocabulary.names, methods, segmenter_predictor(segmenter, vocabulary, args.method),
                      progress=lambda items: tqdm(items, desc="evaluating", unit="image"))
    c = segmenter.config
    settings = {"method": args.method, "clip_model": c.clip_model, "sam_kind": c.sam_kind,
                "random_weights": c.random_weights, "device": str(segmenter.device), "classes": vocabulary.names}
    rep = report(scores, pairs, settings, warnings)
    for m, s in rep["methods"].items():
        print(f"{m}: mIoU {s['miou']}, pixel accuracy {s['pixel_accuracy']} over {rep['images']} images")
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(to_markdown(rep))
    return 0
