"""``python -m deop bench-app``: the web app's latency as its users wait for it, measured through its API
(``deop.bench.app``) or, with --browser, in its page in Chromium (``deop.bench.browser``)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

from ..methods import METHOD_CHOICES

DESCRIPTION = """Times whole requests to the app's /segment endpoint with gradio_client, wall clock at the client:
each example image with its vocabulary (every stage runs), then with one class added (the app reuses the
image's proposals and features). It launches app.py on a free local port with --app-args, or measures an app
already running anywhere, a Hugging Face Space included (--url: a URL or a Space's id). With --browser it
drives the page itself in headless Chromium instead, as a visitor waits: uploading, typing, pressing Segment,
then typing one class more (the page re-runs by itself), timed to the answer's images drawn."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-app", help="time the web app's requests through its API (first run, cached re-run)",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="measure the app running here instead of launching app.py: a URL, "
                                               "or a Hugging Face Space's id (user/space)")
    p.add_argument("--app", default="app.py", help="the app to launch (default: app.py)")
    p.add_argument("--app-args", default="", help='flags for the launched app, one string after "=": '
                                                  '--app-args="--random-weights --device cuda"')
    p.add_argument("--examples", default="assets/examples.json",
                   help="images and vocabularies to send (default: the app's examples)")
    p.add_argument("--images", nargs="+", default=None, help="send these images instead, with --classes")
    p.add_argument("--classes", default=None, help="the vocabulary for --images")
    p.add_argument("--method", default="both", choices=list(METHOD_CHOICES))
    p.add_argument("--masks", type=int, default=None, metavar="N",
                   help="ask for about N segments per image (SAM thresholds 0, NMS off, at most N masks): with "
                        "random weights SAM keeps about one, and real weights give tens")
    p.add_argument("--browser", action="store_true",
                   help="time the page in headless Chromium (Playwright) instead of the API: what a visitor "
                        "waits, files fetched as a browser does")
    p.add_argument("--chromium", default=None, metavar="PATH",
                   help="the Chromium --browser drives (default: $DEOP_CHROMIUM, /usr/bin/chromium, or on PATH)")
    p.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for a launched app")
    p.add_argument("--json", default=None, help="write the records and summary here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench.app import AppBenchError, app_flags, launched, many_masks

    try:
        cases = _cases(args)
        options = many_masks(args.masks) if args.masks else None
        app_args = shlex.split(args.app_args)
        if args.browser and options:
            if args.url:
                raise AppBenchError("--masks with --browser needs the app launched here: the page sends its own "
                                    "widgets' values, which the launched app's flags set")
            app_args += app_flags(options)
        measure = _page if args.browser else _api
        if args.url:
            out = measure(args, args.url, cases, options)
        else:
            with launched(args.app, app_args, args.startup_timeout) as url:
                out = measure(args, url, cases, options)
    except AppBenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        from ..bench.app import machine

        # with --url this is the client's machine, not the server's
        out = {"url": out.pop("url"), "launched": None if args.url else [args.app, *app_args],
               "method": args.method, "options": options, ("client" if args.url else "machine"): machine(), **out}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def _cases(args: argparse.Namespace) -> list:
    from ..bench.app import AppBenchError, Case, load_cases

    if args.images:
        if not args.classes:
            raise AppBenchError("--images needs --classes (the vocabulary to send with them)")
        cases = [Case(str(Path(i).resolve()), args.classes) for i in args.images]
    else:
        cases = load_cases(args.examples)
    missing = [c.image for c in cases if not Path(c.image).is_file()]
    if missing:
        raise AppBenchError(f"image(s) not found: {', '.join(missing)}")
    return cases


def _api(args: argparse.Namespace, url: str, cases: list, options: dict | None) -> dict:
    """The requests through gradio_client, printed as they come and summarised; the JSON's fields."""
    from ..bench.app import AppRecord, format_summary, measure, summarise

    def report(r: AppRecord) -> None:
        print(f"{r.request:<18} {r.image:<16} {r.wall_s:7.2f} s  (pipeline {r.pipeline_s:.2f} s, "
              f"{r.segments} segments{', reused ' + ' and '.join(r.cached) if r.cached else ''})", flush=True)

    run = measure(url, cases, args.method, report=report, options=options)
    summary = summarise(run.records)
    if run.status:
        print(f"app status: {run.status}")
    print(format_summary(summary))
    for warning in run.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return {"url": run.url, "status": run.status, "warnings": run.warnings, "summary": summary,
            "records": [asdict(r) for r in run.records]}


def _page(args: argparse.Namespace, url: str, cases: list, options: dict | None) -> dict:
    """The answers in Chromium's page, printed as they come and summarised; the JSON's fields."""
    from ..bench.browser import PageRecord, find_chromium, format_page_summary, measure_page, summarise_page

    def report(r: PageRecord) -> None:
        print(f"{r.request:<18} {r.image:<16} first {r.first_s:5.2f} s, complete {r.wall_s:5.2f} s  "
              f"({r.files} of {r.images} overlay images fetched, {r.bytes} B)", flush=True)

    version, records = measure_page(url, cases, find_chromium(args.chromium), args.method, report=report,
                                    timeout=args.startup_timeout)
    summary = summarise_page(records)
    print(format_page_summary(summary))
    return {"url": url, "driver": "chromium", "browser": version, "summary": summary,
            "records": [asdict(r) for r in records]}
