"""What a handler's failure looks like to a visitor: our own errors (``deop.errors.DeopError``) as the
message naming the problem; anything else, a bug, logged with its traceback on the server and shown only as
an internal error with an id to quote, never a traceback or Gradio's generic "Error"."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable

import gradio as gr

from ..errors import USER_ERRORS, internal_error

log = logging.getLogger("deop.app")


def user_errors(fn: Callable) -> Callable:
    """Our own errors become a message naming the problem; anything else is a bug: logged with its
    traceback on the server and shown only as an internal error with an id to quote, never a traceback
    or Gradio's generic "Error"."""
    def convert(exc: Exception) -> gr.Error:
        if isinstance(exc, gr.Error):
            return exc
        if isinstance(exc, USER_ERRORS):
            return gr.Error(str(exc))
        return gr.Error(internal_error(exc, log, fn.__name__))

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                raise convert(exc) from None
    else:
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                raise convert(exc) from None
    return wrapped
