"""``python -m deop bench-eval``: eval's images per second in this process and on Ray with 1 and 2 actors
(``deop.bench.throughput`` measures)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from ..arguments import add_model_arguments, config_from_args


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-eval", help="eval throughput: this process against Ray with 1 and 2 actors")
    p.add_argument("--images", type=int, default=12, help="images in the generated dataset (default 12)")
    p.add_argument("--masks", type=int, default=30, help="segments forced per image (default 30)")
    p.add_argument("--workers", type=_ints, default=(1, 2), help="Ray actor counts to time (default 1,2)")
    p.add_argument("--ray-address", default=None, help="time a Ray cluster instead of a local Ray")
    p.add_argument("--json", default=None, help="write the records here")
    add_model_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench.app import machine
    from ..bench.throughput import format_records, measure

    config = config_from_args(args, with_options=False)
    with tempfile.TemporaryDirectory(prefix="deop-bench-eval-") as root:
        out = measure(config, Path(root), args.images, args.masks, args.workers, args.ray_address)
    out["machine"] = machine()
    print(format_records(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0
