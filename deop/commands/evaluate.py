"""``python -m deop eval``: mIoU, per-class IoU and pixel accuracy per method or severance variant, on a
folder dataset or on the standard benchmarks (``deop.benchmarks``), in this process or on Ray (the dataset
layouts and scoring rules are ``deop.evaluation``'s, the engines ``deop.engine``'s)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..arguments import (
    add_engine_arguments,
    add_model_arguments,
    add_option_arguments,
    config_from_args,
    engine_from_args,
    env_default,
)
from ..methods import METHOD_CHOICES

PROTOCOLS = ("pipeline", "training-free")
DESCRIPTION = """Folder mode: --images, --labels and --classes. Benchmark mode: --benchmark and --data-root, e.g.
  python -m deop eval --benchmark voc21,ade20k --data-root data --method dense --protocol training-free \\
      --variants maskclip,sclip,clearclip,naclip
An image that cannot be scored (unreadable, truncated, no label, label values out of range) is reported by
name and the others are counted; the exit code is then 1."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..benchmarks import BENCHMARKS

    p = sub.add_parser("eval", help="mIoU, per-class IoU and pixel accuracy on a folder dataset or the standard "
                                    "benchmarks", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default=None, help="folder mode: folder of images")
    p.add_argument("--labels", default=None,
                   help="folder mode: folder of label PNGs (class indices, 255 = ignore), same stems")
    p.add_argument("--classes", default=None, help="folder mode: text file, one class per line in index order")
    p.add_argument("--benchmark", default=None, metavar="NAME[,NAME...]",
                   help=f"benchmark mode: {', '.join(BENCHMARKS)}; 'paper' for the eight the training-free papers "
                        "average, 'all' for every one")
    p.add_argument("--data-root", default=env_default("DEOP_DATA_ROOT", None),
                   help="folder holding the benchmarks in their usual layouts (VOCdevkit/, ADEChallengeData2016/, "
                        "coco_stuff164k/, cityscapes/, ADE20K_2021_17_01/; README: At scale) ($DEOP_DATA_ROOT)")
    p.add_argument("--method", default="both", choices=list(METHOD_CHOICES),
                   help="one-pass, crop, both: the pipeline on SAM's proposals; dense: every pixel from the dense "
                        "CLIP map (default both)")
    p.add_argument("--protocol", default="pipeline", choices=PROTOCOLS,
                   help="pipeline: the app's settings; training-free: SCLIP/ClearCLIP/NACLIP's published protocol "
                        "(short-side resize, sliding window, logit scale, background threshold; with --method "
                        "dense), each variant with its paper's values, 80 ImageNet templates unless --templates")
    p.add_argument("--variants", default=None, metavar="V[,V...]",
                   help="severance variants to sweep in one run, one table row each (deop, maskclip, sclip, "
                        "clearclip, naclip, none, naclip-noprior); default: --severance's")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N images of each split")
    p.add_argument("--json", default=None, help="write the report as JSON here")
    p.add_argument("--markdown", default=None, help="write the report as Markdown here")
    p.add_argument("--csv", default=None,
                   help="benchmark mode: write the table as CSV here, and the per-class IoU beside it "
                        "(<name>_per_class.csv)")
    p.add_argument("--plot", default=None, help="benchmark mode: write a bar chart of the table (PNG) here")
    add_model_arguments(p)
    add_option_arguments(p)
    add_engine_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import OptionError
    from ..evaluation import parse_variants, plan_runs

    config = config_from_args(args)
    engine = engine_from_args(args)
    if args.limit is not None and args.limit < 1:
        raise OptionError(f"--limit must be at least 1, got {args.limit}")
    runs = plan_runs(args.method, parse_variants(args.variants), config.options.severance,
                     args.protocol == "training-free", config.model)
    if args.benchmark:
        if args.images or args.labels or args.classes:
            raise OptionError("give either --benchmark (with --data-root) or --images, --labels and --classes")
        return _benchmarks(args, config, engine, runs)
    missing = [f for f in ("images", "labels", "classes") if not getattr(args, f)]
    if missing:
        raise OptionError(f"folder mode needs --{', --'.join(missing)} (or --benchmark NAME --data-root DIR)")
    if args.protocol == "training-free":
        raise OptionError("the training-free protocol needs a benchmark (--benchmark): a folder dataset has no "
                          "published settings")
    return _folder(args, config, engine, runs)


def _execute(args: argparse.Namespace, config: Any, engine: Any, plan: Any, samples: list, bars: dict) -> Any:
    """Runs the plan on the engine, advancing each dataset's progress bar as its images are done."""
    from ..engine import evaluate
    from ..evaluation import Partial

    def report(part: Partial) -> None:
        done: dict[str, int] = dict(part.images)
        for key, _, error in part.failed:
            done[key] = done.get(key, 0) + 1
            bars[key].write(f"error: {error}", file=sys.stderr)
        for key, n in done.items():
            bars[key].update(n)

    return evaluate(config, plan, samples, engine, report)


def _bars(counts: dict[str, int]) -> dict[str, Any]:
    from tqdm import tqdm

    return {key: tqdm(total=n, desc=key, unit="image", position=i, leave=True, dynamic_ncols=True)
            for i, (key, n) in enumerate(counts.items())}


def _settings(args: argparse.Namespace, config: Any, engine: Any, plan: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {"method": args.method, "protocol": args.protocol, "runs": [asdict(r) for r in plan.runs],
            "clip_model": config.clip_model, "sam_kind": config.sam_kind, "random_weights": config.random_weights,
            "device": config.device, "options": asdict(config.options), "engine": asdict(engine),
            "protocol_templates": plan.protocol_templates if args.protocol == "training-free" else None,
            "limit": args.limit}


def _folder(args: argparse.Namespace, config: Any, engine: Any, runs: Any) -> int:
    from ..evaluation import FOLDER_LAYOUT, DatasetSpec, Plan, folder_report, folder_samples, read_classes
    from ..evaluation import markdown as to_markdown

    vocabulary = read_classes(args.classes)
    samples = folder_samples(args.images, args.labels)[: args.limit]
    plan = Plan(runs, {"folder": DatasetSpec("folder", "folder", vocabulary, FOLDER_LAYOUT)})
    bars = _bars({"folder": len(samples)})
    partial = _execute(args, config, engine, plan, samples, bars)
    for bar in bars.values():
        bar.close()
    settings = {**_settings(args, config, engine, plan), "classes": vocabulary.names}
    rep = folder_report(plan, partial, samples, settings)
    for m, s in rep["methods"].items():
        print(f"{m}: mIoU {s['miou']}, pixel accuracy {s['pixel_accuracy']} over {rep['images']} images")
    _report_failures(rep["failed"])
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(to_markdown(rep))
    return 1 if rep["failed"] else 0


def _report_failures(failed: list[dict[str, str]], where: str = "") -> None:
    if failed:
        print(f"{len(failed)} image(s){where} could not be scored and were left out:", file=sys.stderr)
        for f in failed:
            print(f"  {f['name']}: {f['error']}", file=sys.stderr)


def _benchmarks(args: argparse.Namespace, config: Any, engine: Any, runs: Any) -> int:
    from ..benchmarks import get_benchmarks, manifest
    from ..errors import DatasetError, OptionError
    from ..evaluation import DatasetSpec, Plan, benchmark_csv, benchmark_markdown, benchmark_plot, benchmark_report
    from ..protocol import PROTOCOL_TEMPLATES

    benchmarks = get_benchmarks(args.benchmark)
    if not args.data_root:
        raise OptionError("--benchmark needs --data-root (or $DEOP_DATA_ROOT): the folder holding the benchmarks")
    variants = sorted({r.variant for r in runs if r.protocol})
    datasets, samples, skipped, extra = {}, [], {}, {}
    for b in benchmarks:
        try:
            layout, root, found = manifest(b, args.data_root, args.limit)
        except DatasetError as exc:
            skipped[b.name] = str(exc)
            print(f"error: {exc}", file=sys.stderr)
            continue
        datasets[b.name] = DatasetSpec.of(b, layout, variants)
        samples += found
        extra[b.name] = {"root": str(root), "expected_images": b.expected_images}
    if not datasets:
        raise DatasetError(f"none of the benchmarks was found under {args.data_root} (see the errors above)")
    plan = Plan(runs, datasets, args.templates or PROTOCOL_TEMPLATES)
    counts = {k: sum(s.benchmark == k for s in samples) for k in datasets}
    bars = _bars(counts)
    start = time.perf_counter()
    partial = _execute(args, config, engine, plan, samples, bars)
    for bar in bars.values():
        bar.close()
    wall = time.perf_counter() - start
    settings = {**_settings(args, config, engine, plan), "seconds": round(wall, 3),
                "images_per_second": round(sum(partial.images.values()) / wall, 4)}  # wall clock, loading included
    rep = benchmark_report(plan, partial, counts, settings, skipped, extra)
    print(benchmark_markdown(rep).split("\n\n")[1])  # the table
    for key, b in rep["benchmarks"].items():
        _report_failures(b["failed"], f" of {key}")
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(benchmark_markdown(rep))
    if args.csv:
        table, per_class = benchmark_csv(rep)
        path = Path(args.csv)
        path.write_text(table)
        path.with_name(f"{path.stem}_per_class.csv").write_text(per_class)
    if args.plot:
        benchmark_plot(rep, args.plot)
    failed = any(b["failed"] for b in rep["benchmarks"].values())
    return 1 if failed or skipped else 0
