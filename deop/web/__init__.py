"""The web app (Gradio), one job per file:

- ``server.py``: the server's state (models, sessions, janitor, loader, limits) and one method per endpoint,
  callable with plain values without a page; ``questions.py``: its handlers that a session's kept result
  answers (clicks, added segments, the variants' comparison, the heatmap, the downloads); ``errors.py``:
  what a handler's failure shows;
- ``layout.py``: the page, a declaration that creates components (menus and widgets from the registries and
  the option descriptions);
- ``events.py``: the wiring of events to handlers, one table (event, handler, inputs, outputs, API name,
  concurrency group);
- ``gpu.py``: the ZeroGPU boundary (what runs under ``@spaces.GPU``);
- ``workarounds.py``: every patch of Gradio's internals, each naming the behaviour and release it works around;
- ``texts.py``: the words shown; ``files.py``: the app's folders and assets; ``timings.py``: where a
  request's time goes on the server (``/timings``, read by ``python -m deop bench-app``);
- ``app.py``: ``build_app`` assembling them, ``launch``, and ``python app.py``'s ``main``.

Importing this package imports Gradio; nothing else in ``deop`` imports it.
"""
