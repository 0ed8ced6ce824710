"""``python -m deop bench``: what DeOP's one CLIP pass buys over the crop baseline, measured on this device
(``deop.bench.measure`` measures, ``deop.bench.report`` judges and writes)."""

from __future__ import annotations

import argparse
from typing import Any

from ..arguments import add_model_arguments, config_from_args

DEFAULT_SIZES = (448, 672, 1024)
DEFAULT_N = (10, 25, 50, 100, 200)
QUICK_SIZES = (448, 672)
QUICK_N = (10, 100, 200)
MASK_COUNTS = (1, 30, 100, 300)
# What the CPU default is chosen from: each proposal model at the encoder input it would run at.
CPU_CANDIDATES = (("vit_b", 448), ("vit_b", 512), ("vit_b", 1024), ("mobile_sam", 1024), ("sam2.1_hiera_t", 448))
CLICK_MODELS = (("vit_b", 448), ("mobile_sam", 1024), ("sam2.1_hiera_t", 448))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _precisions(text: str) -> tuple[str, ...]:
    from ..precision import PRECISIONS

    names = tuple(v.strip() for v in text.split(",") if v.strip())
    wrong = [n for n in names if n not in PRECISIONS[1:]]
    if wrong or not names:
        raise argparse.ArgumentTypeError(f"{', '.join(wrong) or 'nothing'} given; choose among "
                                         f"{', '.join(PRECISIONS[1:])}, comma-separated")
    return tuple(dict.fromkeys(names))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time one-pass vs crop classification, re-query, end to end and memory; with "
                       "--model deop-trained, the trained model against crops on 100 proposals at short side 512")
    p.add_argument("--quick", action="store_true",
                   help=f"sizes {QUICK_SIZES}, N {QUICK_N} (crops up to 100), 1 repeat, end to end fast only")
    p.add_argument("--sizes", type=_ints, default=None, help="image long sides, e.g. 448,672,1024")
    p.add_argument("--n-masks", type=_ints, default=None, help="masks per image, e.g. 10,25,50,100,200")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats after one warm-up (default 3)")
    p.add_argument("--skip-e2e", action="store_true", help="no end-to-end runs with SAM")
    p.add_argument("--e2e-points", type=_ints, default=None,
                   help="points_per_side values run with the fast preset (default: its own 10, then 12 and 16) "
                        "besides demo")
    p.add_argument("--backends", default=None,
                   help="other proposal models run end to end, comma-separated (default: the app's other "
                        "proposal models whose packages are installed; none with --quick); 'none' for none")
    p.add_argument("--forced-masks", type=int, default=30,
                   help="segments asked for in the proposal models' end-to-end comparison (default 30)")
    p.add_argument("--proposal-masks", type=_ints, default=None,
                   help=f"masks passing in the generators' comparison (default {','.join(map(str, MASK_COUNTS))}; "
                        f"--quick {MASK_COUNTS[0]},{MASK_COUNTS[-1]})")
    p.add_argument("--only-proposals", action="store_true",
                   help="only the generators' comparison, fast preset (e.g. --precision float32 against auto)")
    p.add_argument("--precisions", type=_precisions, default=None,
                   help="only the classification stage, at these precisions side by side (e.g. float32,bfloat16): "
                        "their calls taken in turn in one process, so that their one-pass/crop ratios compare "
                        "(two bench runs differ by more than the ratios do)")
    p.add_argument("--json", default=None, help="write the records here")
    p.add_argument("--plot", default=None, help="write the latency plot (PNG) here")
    add_model_arguments(p)
    p.set_defaults(func=run)


def plan(args: argparse.Namespace) -> dict[str, Any]:
    """Sizes, N, repeats and end-to-end configurations from the flags (--quick sets smaller defaults)."""
    quick = args.quick
    points = args.e2e_points
    if quick:
        e2e = [("fast", None)] + [("fast", p) for p in points or ()]
    else:
        e2e = [("fast", p) for p in (points or (None, 12, 16))] + [("demo", None)]
    return {
        "sizes": args.sizes or (QUICK_SIZES if quick else DEFAULT_SIZES),
        "n_masks": args.n_masks or (QUICK_N if quick else DEFAULT_N),
        # The crop baseline is linear in N (one encoder pass per crop); --quick stops it at 100 to fit.
        "crop_n_masks": tuple(n for n in (args.n_masks or QUICK_N) if n <= 100) if quick else None,
        "repeats": args.repeats or (1 if quick else 3),
        "e2e": [] if args.skip_e2e else e2e,
        "e2e_methods": ("one-pass",) if quick else ("one-pass", "both"),
        "templates": "single" if quick else None,
        # ours against the stock generator at 1, 30, 100 and 300 passing masks on a real photo; needs SAM, so
        # it goes with the end-to-end runs
        "proposal_counts": None if args.skip_e2e else {
            "presets": ("fast",) if quick or getattr(args, "only_proposals", False) else ("fast", "demo"),
            "targets": getattr(args, "proposal_masks", None) or ((MASK_COUNTS[0], MASK_COUNTS[-1]) if quick
                                                                 else MASK_COUNTS)},
        "only_proposals": getattr(args, "only_proposals", False),
        "precisions": getattr(args, "precisions", None),
        "candidates": () if args.skip_e2e or quick else _candidates(),
        # the research tools' costs: a click that adds a segment (SAM at the fast preset's input, MobileSAM),
        # and the severance variants side by side
        "click_models": () if args.skip_e2e else _available(CLICK_MODELS),
        "forced_masks": args.forced_masks,
        "backends": () if args.skip_e2e else _backends(args.backends, quick, config_from_args(args, False).sam_kind),
    }


def _candidates() -> tuple[tuple[str, int], ...]:
    return _available(CPU_CANDIDATES)


def _available(models: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int], ...]:
    from ..proposers import PROPOSERS

    return tuple((k, size) for k, size in models if PROPOSERS[k].available())


def _backends(flag: str | None, quick: bool, main: str) -> tuple[str, ...]:
    """Other proposal models to run end to end: by default the models the app offers, other than `main`,
    whose package is installed (none with --quick)."""
    from ..proposers import PROPOSERS, get_proposer

    if flag is None:
        return () if quick else tuple(n for n, s in PROPOSERS.items() if s.in_app and n != main and s.available())
    kinds = tuple(k.strip() for k in flag.split(",") if k.strip() and k.strip() != "none")
    for kind in kinds:
        get_proposer(kind).family.require()
    return kinds


def steps(p: dict[str, Any]) -> int:
    if p.get("only_proposals"):
        return len((p.get("proposal_counts") or {"targets": ()})["targets"])
    if p.get("precisions"):
        return len(p["sizes"]) * len(p["n_masks"])
    crops = p["crop_n_masks"] if p["crop_n_masks"] is not None else p["n_masks"]
    counts = p.get("proposal_counts") or {"presets": (), "targets": ()}
    return ((len(p["n_masks"]) + len(crops)) * len(p["sizes"]) + len(p["e2e"]) * len(p["e2e_methods"]) + 4
            + len(counts["presets"]) * len(counts["targets"]) + len(p.get("candidates", ())) * len(p["e2e_methods"])
            + len(p.get("backends", ())) * len(p["e2e"]) + len(p.get("click_models", ()))
            + (1 if p.get("click_models") else 0))


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ..bench.measure import Bench, run_bench
    from ..bench.report import format_table, write_json, write_plot
    from ..pipeline import Segmenter

    segmenter = Segmenter(config_from_args(args, with_options=False))
    if segmenter.config.trained:  # the paper's own comparison: its trained model against crops
        return run_trained(segmenter, args)
    p = plan(args)
    segmenter.load()
    if segmenter.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(segmenter.device)
    with tqdm(total=steps(p), desc="bench", unit="step") as bar:
        def advance(desc: str) -> None:
            bar.set_postfix_str(desc)
            bar.update()

        records = run_bench(Bench(segmenter, repeats=p["repeats"], advance=advance), p)
    print(format_table(records))
    for t in records[-1]["targets"]:
        print(f"{t['status']}  {t['name']}: {t['value']} (limit {t['limit']:g}) {t['detail']}")
    if args.json:
        write_json(records, args.json)
    if args.plot:
        write_plot(records, args.plot)
    return 0


def run_trained(segmenter: Any, args: argparse.Namespace) -> int:
    """``--model deop-trained``: one record, the trained one pass against crops on 100 proposals (the last
    ``--n-masks`` value, if given) at the paper's test size (``deop.bench.trained``)."""
    import torch

    from ..bench.report import write_json
    from ..bench.trained import format_trained, trained_record

    segmenter.load()
    if segmenter.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(segmenter.device)
    n_crops = args.n_masks[-1] if args.n_masks else 100
    record = trained_record(segmenter, args.repeats or (1 if args.quick else 3), n_crops=n_crops)
    print(format_trained(record))
    if args.json:
        write_json([record], args.json)
    return 0
