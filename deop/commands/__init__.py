"""Command line: ``python -m deop segment|bench|bench-app|bench-eval|eval``.

Each subcommand is a module here with ``add_parser`` (its flags, most generated from the settings'
descriptions by ``deop.arguments``) and the function it runs; the modules import the heavy parts of the
package only when they run, so ``--help`` answers at once. Errors a user can fix (a bad image, an empty
vocabulary, missing weights) end in one line on stderr and exit code 2, never a traceback; anything else
is a bug, printed with its traceback under a short id.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from ..errors import USER_ERRORS, internal_error
from . import bench, bench_app, bench_eval, evaluate, segment


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deop", description="DeOP open-vocabulary segmentation")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (segment, bench, bench_app, bench_eval, evaluate):
        module.add_parser(sub)
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
    except Exception as exc:  # a bug: its traceback on stderr, then the line to quote
        traceback.print_exception(exc, file=sys.stderr)
        print(f"error: {internal_error(exc, None, args.command)}", file=sys.stderr)
        return 3
