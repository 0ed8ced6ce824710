"""Every exception the package raises on purpose, in one module that imports nothing from deop.

An error is either the user's to fix (a ``DeopError``: a bad image, an empty vocabulary, missing
weights, a setting out of range, a time limit) or ours (anything else: a bug). The CLI prints a
``DeopError`` as one line and the app shows it as a message; anything else is logged with its
traceback under a short id, and the user is shown only the id to quote (``internal_error``), so a bug
is neither hidden behind a one-line "error:" nor shown as a traceback in the page.
"""

from __future__ import annotations

import logging
import secrets


class DeopError(Exception):
    """An error the user can act on; its message is one line, fit to show as it is."""


class OptionError(DeopError, ValueError):
    """A setting or request option outside what it accepts; the message names it and its range."""


class UnknownOptionError(OptionError, TypeError):
    """An option name that does not exist (a typo in a keyword override)."""


class ImageError(DeopError, ValueError):
    """The input cannot be used as an image."""


class VocabularyError(DeopError, ValueError):
    """A vocabulary the user has to fix."""


class WeightsError(DeopError, RuntimeError):
    """Weights are missing, unreachable or corrupt; the message says how to fix it by hand."""


class MissingPackageError(WeightsError):
    """An optional model package (sam2, mobile_sam) is not installed; the message says how to install it."""


class SegmentTimeout(DeopError, TimeoutError):
    """A request ran past its time limit; it was stopped between two steps and nothing was cached."""


class Cancelled(DeopError):
    """The client went away (page closed, API client killed); the request stopped between two steps."""


class TooExpensive(DeopError):
    """A request whose estimated cost cannot fit its time limit; refused before anything ran."""


class DeviceOutOfMemory(DeopError, RuntimeError):
    """The device ran out of memory; the caches were emptied so that the next request can run."""


class OutputError(DeopError, OSError):
    """Results could not be written where they were asked to go."""


class DatasetError(DeopError, ValueError):
    """An evaluation dataset (images, labels, classes file) that does not fit the expected layout."""


class EngineError(DeopError, RuntimeError):
    """The Ray engine cannot run: Ray is not installed, or its cluster does not answer; the message says
    how to fix it."""


USER_ERRORS: tuple[type[BaseException], ...] = (DeopError,)


def internal_error(exc: BaseException, log: logging.Logger | None, context: str = "request") -> str:
    """Log `exc` with its traceback under a fresh short id and return the line a user should see; with no
    log (the CLI), the caller prints the traceback itself."""
    error_id = secrets.token_hex(4)
    if log is None:
        return f"internal error (id {error_id}): this is a bug, not something in your input; the traceback is above"
    log.error("internal error %s in %s: %s", error_id, context, exc, exc_info=exc)
    return (f"internal error (id {error_id}): this is a bug, not something in your input; the server log "
            f"has the details under that id")
