"""Judging and reporting ``python -m deop bench`` records: the issue's targets, the text table, the JSON
and the latency plot.

Everything here works on the flat records alone (``BenchRecord.to_dict``), so a saved JSON can be judged
and plotted again later, on another machine, without running anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class TargetResult:
    name: str
    status: str  # "PASS", "FAIL" or "SKIP" (the records do not hold what it needs)
    value: float | None
    limit: float
    detail: str


# -- targets ---------------------------------------------------------------------------------------------
def _median(records: Sequence[dict], **match: Any) -> float | None:
    for r in records:
        if all(r.get(k) == v for k, v in match.items()) and r.get("seconds_median") is not None:
            return r["seconds_median"]
    return None


def evaluate_targets(records: Sequence[dict]) -> list[TargetResult]:
    """The issue's targets, judged from flat records (``BenchRecord.to_dict``); SKIP when not measured."""
    out = []
    for size, limit in ((448, 15.0), (672, 6.0)):
        one = _median(records, kind="classify", method="one-pass", image_size=size, n_masks=100)
        crop = _median(records, kind="classify", method="crop", image_size=size, n_masks=100)
        ratio = crop / one if one and crop else None
        out.append(_judge(f"one-pass >= {limit:g}x faster than crop, N=100 @{size}", ratio, limit, higher=True,
                          detail=f"crop {crop}s / one-pass {one}s"))
    ratios = []
    for size in sorted({r["image_size"] for r in records if r.get("kind") == "classify"}):
        lo = _median(records, kind="classify", method="one-pass", image_size=size, n_masks=10)
        hi = _median(records, kind="classify", method="one-pass", image_size=size, n_masks=200)
        if lo and hi:
            ratios.append((hi / lo, size))
    worst = max(ratios, default=None)
    out.append(_judge("one-pass time N=200 <= 1.3x N=10 (worst size)", worst[0] if worst else None, 1.3,
                      higher=False, detail=f"at {worst[1]}px" if worst else "", inclusive=True))
    requery = _median(records, kind="requery", n_classes=20, text="cached")
    out.append(_judge("20-class re-query on a cached image < 0.1 s", requery, 0.1, higher=False, detail=""))
    mem = [r for r in records if r.get("kind") == "memory" and (r.get("max_image_size") or 0) >= 1024
           and r.get("sam_ran")]
    peak = mem[-1]["peak_rss_mb"] / 1024 if mem else None
    out.append(_judge("peak RSS with a 1024 px image < 4 GB", peak, 4.0, higher=False, detail="GiB"))
    main = {"sam_model": records[0].get("sam_model")} if records else {}  # not other backends' records
    many = dict(kind="proposals", preset="fast", target_masks=300, **main)
    stock, ours = _median(records, method="stock", **many), _median(records, method="deop", **many)
    network = next((r["network_seconds"] for r in records if r.get("method") == "deop"
                    and all(r.get(k) == v for k, v in many.items())), None)
    out.append(_judge("proposals >= 3x faster than stock at 300 passing masks (fast preset)", stock / ours
                      if ours and stock else None, 3.0, higher=True, detail=f"stock {stock}s / ours {ours}s"))
    out.append(_judge("proposals within 1.5x of the networks alone at 300 masks", ours / network
                      if ours and network else None, 1.5, higher=False, inclusive=True,
                      detail=f"ours {ours}s / encoder+decoder {network}s"))
    one = dict(many, target_masks=1)
    stock1, ours1 = _median(records, method="stock", **one), _median(records, method="deop", **one)
    out.append(_judge("proposals no slower than stock at 1 passing mask (5% timing noise)", ours1 / stock1
                      if ours1 and stock1 else None, 1.05, higher=False, inclusive=True,
                      detail=f"ours {ours1}s / stock {stock1}s"))
    demo = _median(records, kind="e2e", method="one-pass", preset="demo", preset_default=True, **main)
    fast = _median(records, kind="e2e", method="one-pass", preset="fast", preset_default=True, **main)
    speed = demo / fast if demo and fast else None
    out.append(_judge('"fast" preset >= 3x faster end to end than "demo"', speed, 3.0, higher=True,
                      detail=f"demo {demo}s / fast {fast}s"))
    return out


def _judge(name: str, value: float | None, limit: float, higher: bool, detail: str,
           inclusive: bool = False) -> TargetResult:
    if value is None:
        return TargetResult(name, "SKIP", None, limit, "not measured in this run")
    ok = value >= limit if higher else (value <= limit if inclusive else value < limit)
    return TargetResult(name, "PASS" if ok else "FAIL", round(value, 4), limit, detail)


def targets_record(targets: Sequence[TargetResult], template: dict | None = None) -> dict[str, Any]:
    """The final JSON record: the record schema with no measurement, and the targets list."""
    base = {k: None for k in ("method", "n_masks", "image_size", "seconds_median")}
    for k in ("device", "torch_threads", "clip_model", "sam_model", "random_weights", "precision"):
        base[k] = (template or {}).get(k)
    return {"kind": "targets", **base, "method": "targets", "targets": [asdict(t) for t in targets]}


# -- output ----------------------------------------------------------------------------------------------
def _detail(r: dict) -> str:
    if r["kind"] == "classify":
        return f"{r.get('n_classes')} classes"
    if r["kind"] == "requery":
        return f"{r.get('n_classes')} classes, text {r.get('text')}"
    if r["kind"] == "e2e":
        return f"{r.get('sam_model')} {r.get('preset')} pps={r.get('points_per_side')}"
    if r["kind"] == "proposals":
        same = "equal" if r.get("identical") else "DIFFERENT"
        if r.get("precision", "float32") != "float32":  # stock runs float32: equal only at float32
            same = f"{same} ({r['precision']} against stock's float32)"
        return (f"{r.get('sam_model')}@{r.get('sam_input_size')} {r.get('preset')} pps={r.get('points_per_side')}, "
                f"network {r.get('network_seconds')}s, masks {same}")
    if r["kind"] == "click":
        return f"{r.get('sam_model')}@{r.get('sam_input_size')}, {r.get('clicks')} clicks on a cached image"
    if r["kind"] == "variants":
        if r.get("method") == "all cached":
            return "every variant again, all dense maps cached"
        return "dense pass reused" if r.get("reused") else f"clip {r.get('clip_size')}px, first look"
    if r["kind"] == "e2e_masks":
        return f"{r.get('sam_model')}@{r.get('sam_input_size')} fast, {r.get('forced_masks')} masks asked"
    return f"max image {r.get('max_image_size')}px" if r["kind"] == "memory" else ""


def format_table(records: Sequence[dict]) -> str:
    rows = [("kind", "method", "precision", "size", "N", "detail", "median s", "min-max s", "peak RSS MB")]
    for r in records:
        if r["kind"] == "targets":
            continue
        detail = _detail(r)
        med = "" if r["seconds_median"] is None else f"{r['seconds_median']:.3f}"
        spread = "" if r["seconds_min"] is None else f"{r['seconds_min']:.3f}-{r['seconds_max']:.3f}"
        rows.append((r["kind"], r["method"], r.get("precision", ""), str(r["image_size"] or ""),
                     str(r["n_masks"] or ""), detail, med, spread, f"{r['peak_rss_mb']:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    speedups = []
    several = len({r.get("precision") for r in records if r["kind"] == "classify"}) > 1
    for r in records:
        if r["kind"] == "classify" and r["method"] == "one-pass":
            crop = _median(records, kind="classify", method="crop", image_size=r["image_size"], n_masks=r["n_masks"],
                           precision=r.get("precision"))
            if crop:
                label = f"{r['precision']} " if several else ""
                speedups.append(f"{label}{r['image_size']}px N={r['n_masks']}: {crop / r['seconds_median']:.1f}x")
    if speedups:
        lines.append("one-pass speed-up over crops: " + "; ".join(speedups))
    return "\n".join(lines)


def write_json(records: Sequence[dict], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(records), indent=1) + "\n")


def write_plot(records: Sequence[dict], path: str | Path) -> None:
    """Classification latency against N, log-log: one-pass solid, crops dashed, one colour per size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    classify = [r for r in records if r["kind"] == "classify"]
    sizes = sorted({r["image_size"] for r in classify})
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    for i, size in enumerate(sizes):
        for method, style in (("one-pass", "-o"), ("crop", "--s")):
            pts = sorted((r["n_masks"], r["seconds_median"], r["seconds_min"], r["seconds_max"]) for r in classify
                         if r["image_size"] == size and r["method"] == method)
            if not pts:
                continue
            n, med, lo, hi = (np.array(v, dtype=float) for v in zip(*pts))
            ax.errorbar(n, med, yerr=[med - lo, hi - med], fmt=style, color=colours[i % len(colours)], capsize=3,
                        label=f"{method} {size}px")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("masks per image (N)")
    ax.set_ylabel("classification seconds (median)")
    device = classify[0]["device"] if classify else ""
    ax.set_title(f"DeOP one pass vs crop baseline ({device})")
    ax.grid(True, which="both", alpha=0.3)
    if classify:
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
