"""The app assembled: the server, the page, the examples and the events, then launched as ``python app.py``
does. What each piece is: ``deop.web.server`` (state and handlers), ``layout`` (components), ``events`` (the
wiring table), ``gpu`` (ZeroGPU's boundary), ``workarounds`` (Gradio's internals), ``files`` (folders); the
package's docstring has the list."""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from pathlib import Path

import gradio as gr

from ..arguments import add_model_arguments, add_option_arguments, config_from_args, env_default
from ..config import SegmenterConfig
from ..errors import DeopError
from . import events, layout, texts, workarounds
from .files import ASSETS, MAX_FILE_SIZE, ROOT, examples, work_dir
from .server import Server

log = logging.getLogger("deop.app")
# What the examples show, lazily cached: the outputs of Server.example, in its order.
EXAMPLE_OUTPUTS = ("one_pass", "crop", "latency", "chart", "files", "inspect", "run_status")


def build_app(config: SegmenterConfig, time_limit: float | None = 300.0, queue_size: int = 16,
              calibrate: bool = True, session_bytes: int = 192 * 2**20, folder: Path | None = None) -> gr.Blocks:
    """The app (``Server``'s arguments); the built Blocks carries its server as ``demo.deop``."""
    workarounds.atomic_image_cache()
    server = Server(config, time_limit, calibrate, session_bytes, folder)
    shown = examples()
    with gr.Blocks(title=texts.TITLE, delete_cache=(600, 3600)) as demo:
        page = layout.build_page(config.random_weights, server.status(), server.defaults, server.models,
                                 server.options, server.sessions.drop)
        digest = hashlib.sha256(repr((config, server.defaults)).encode()).hexdigest()[:16]
        with workarounds.examples_cache(server.folder / "examples" / digest):
            gr.Examples([[str(ROOT / e["image"]), e["vocabulary"]] for e in shown], [page.image, page.vocabulary],
                        [page[n] for n in EXAMPLE_OUTPUTS], fn=server.example, cache_examples=True,
                        cache_mode="lazy")
        events.wire(events.table(demo, page, server))
    workarounds.pad_missing_inputs(demo)
    example_events = workarounds.example_events(demo)
    for block_fn in example_events:  # the examples' lazy caching runs the models too: one at a time
        block_fn.concurrency_id = events.PIPELINE
    if len(example_events) != 1:
        log.warning("found %d example events, not one: this Gradio names them otherwise, and lazily cached "
                    "examples may run beside a request", len(example_events))
    server.client_probe = lambda: workarounds.client_alive(demo)
    server.janitor.protect(workarounds.example_copies(ROOT / e["image"] for e in shown))
    demo.deop = server  # for tests and operators
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    return demo


def launch(demo: gr.Blocks, **kwargs):
    """Serve the app; besides its own outputs, Gradio may read files only from ``assets/`` (the examples);
    uploads above ``MAX_FILE_SIZE`` are refused with a message."""
    kwargs.setdefault("max_file_size", MAX_FILE_SIZE)
    return demo.launch(allowed_paths=[str(ASSETS)], css=layout.CSS, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description="DeOP open-vocabulary segmentation demo")
    add_model_arguments(parser)
    add_option_arguments(parser, preset="fast")  # interactive use on a CPU: see PROPOSAL_PRESETS
    parser.add_argument("--port", type=int, default=env_default("GRADIO_SERVER_PORT", 7860, int),
                        help="port to serve on (default 7860; $GRADIO_SERVER_PORT)")
    parser.add_argument("--host", default=env_default("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (default 127.0.0.1; $GRADIO_SERVER_NAME, e.g. 0.0.0.0 on a Space)")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds per request (default 300)")
    parser.add_argument("--session-memory", type=int, default=192,
                        help="MB that all browser sessions' results may hold together (default 192); the least "
                             "recently used go first")
    args = parser.parse_args()
    # Gradio's uploads and cache in this app's own folder (read by Gradio from the environment).
    os.environ.setdefault("GRADIO_TEMP_DIR", str(work_dir() / "gradio"))
    launch(build_app(config_from_args(args), args.time_limit, session_bytes=args.session_memory * 2**20),
           server_name=args.host, server_port=args.port, share=args.share)


def run() -> None:
    """``python app.py``: a bad setting (a flag, $DEOP_*, $GRADIO_SERVER_PORT) is one line naming it and
    exit status 2, as in the CLI, not a traceback."""
    try:
        main()
    except DeopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
