"""The Space's entry point (``app_file: app.py``): ``python app.py [flags]`` serves the demo.

The app itself is the ``deop.web`` package: ``server.py`` holds the state and one handler per endpoint,
``layout.py`` declares the page, ``events.py`` wires events to handlers in one table, ``gpu.py`` is
ZeroGPU's boundary and ``workarounds.py`` every patch of Gradio's internals. ``python -m deop bench-app``
launches this file too.
"""

from __future__ import annotations

from deop.web.app import build_app, launch, main, run

__all__ = ["build_app", "launch", "main", "run"]

if __name__ == "__main__":
    run()
