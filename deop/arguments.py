"""Command-line flags generated from the settings' descriptions (``deop.config``), for ``python -m deop``
and ``app.py`` alike, with one precedence rule for every setting: the flag, then its environment variable,
then the default (for a request option: the preset's value, then the option's default).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from typing import Any

from .config import (
    PROPOSAL_PRESETS,
    EngineConfig,
    Option,
    ProposalConfig,
    SegmenterConfig,
    SegmentOptions,
    options_of,
)
from .errors import OptionError

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def env_value(option: Option) -> Any:
    """The option's environment variable, read as the option's type, or None when it is not set."""
    name = option.meta.env
    raw = os.environ.get(name) if name else None
    if raw is None:
        return None
    text = raw.strip()
    try:
        if option.type == "bool":
            if text.lower() not in _TRUE | _FALSE:
                raise ValueError
            value: Any = text.lower() in _TRUE
        elif option.type == "int":
            value = int(text)
        elif option.type == "float":
            value = float(text)
        else:
            value = text
        return option.check(value)
    except (ValueError, OptionError) as exc:
        detail = f": {exc}" if isinstance(exc, OptionError) else ""
        raise OptionError(f"environment variable {name}={raw!r} is not a valid {option.name}{detail}") from None


def env_default(name: str, default: Any, cast: type = str) -> Any:
    """A launcher setting that is not an option (the app's host and port): the variable, else `default`."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except ValueError:
        raise OptionError(f"environment variable {name}={raw!r} must be a {cast.__name__}") from None


def _add(parser: argparse.ArgumentParser, option: Option, default: Any) -> None:
    flag = option.flag
    if flag is None:
        return
    kwargs: dict[str, Any] = {"dest": option.name, "help": option.meta.help}
    if option.type == "bool":
        kwargs["action"] = "store_false" if flag.startswith("--no-") else "store_true"
        kwargs["default"] = None
    else:
        kwargs.update(type={"int": int, "float": float}.get(option.type, str), default=None,
                      metavar=option.name.upper() if option.choices is None else None)
        if option.choices is not None:
            kwargs["choices"] = option.choices
        shown = default if default is not None else option.default
        if shown is not None and option.meta.env:
            kwargs["help"] += f" (default {shown}; ${option.meta.env})"
        elif shown is not None:
            kwargs["help"] += f" (default {shown})"
    parser.add_argument(flag, **kwargs)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Model and device flags, from ``SegmenterConfig``'s options."""
    for option in options_of(SegmenterConfig):
        _add(parser, option, None)


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """--engine, --ray-address, --workers, --gpus-per-worker, --batch-size, from ``EngineConfig``'s options."""
    for option in options_of(EngineConfig):
        _add(parser, option, None)


def engine_from_args(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(**{o.name: v for o in options_of(EngineConfig) if (v := _given(args, o)) is not None})


def add_option_arguments(parser: argparse.ArgumentParser, preset: str = "demo") -> None:
    """Per-request flags, from ``SegmentOptions``' and ``ProposalConfig``'s options, after ``--preset``."""
    parser.add_argument("--preset", choices=list(PROPOSAL_PRESETS), default=env_default("DEOP_PRESET", preset),
                        help=f"proposal settings: demo (DeOP demo's), fast (CPU), quality (default {preset}; "
                             "$DEOP_PRESET); the SAM flags below override it")
    base = PROPOSAL_PRESETS[preset]
    for option in options_of(ProposalConfig):
        _add(parser, option, getattr(base, option.name))
    for option in options_of(SegmentOptions):
        _add(parser, option, None)


def _given(args: argparse.Namespace, option: Option) -> Any:
    """The flag's value, else the environment's, else None."""
    value = getattr(args, option.name, None)
    return value if value is not None else env_value(option)


def config_from_args(args: argparse.Namespace, with_options: bool = True) -> SegmenterConfig:
    """The models from the model flags; the default request options from the option flags, or the
    library's defaults when `with_options` is False (the bench sets its own per measurement)."""
    given = {o.name: v for o in options_of(SegmenterConfig) if (v := _given(args, o)) is not None}
    if not with_options:
        return SegmenterConfig(**given)
    return SegmenterConfig(**given, options=options_from_args(args, given.get("random_weights", False)))


def options_from_args(args: argparse.Namespace, random_weights: bool | None = None) -> SegmentOptions:
    preset = getattr(args, "preset", "demo")
    if preset not in PROPOSAL_PRESETS:  # from $DEOP_PRESET: argparse checks only what is typed
        raise OptionError(f"preset must be one of {', '.join(PROPOSAL_PRESETS)}; got {preset!r} ($DEOP_PRESET)")
    proposals = PROPOSAL_PRESETS[preset]
    if random_weights is None:
        random_weights = bool(_given(args, next(o for o in options_of(SegmenterConfig) if o.name == "random_weights")))
    if random_weights:
        proposals = random_weight_proposals(proposals)
    flat = {o.name: v for o in (*options_of(ProposalConfig), *options_of(SegmentOptions))
            if (v := _given(args, o)) is not None}
    return SegmentOptions(proposals=proposals).with_overrides(**flat)


def random_weight_proposals(config: ProposalConfig) -> ProposalConfig:
    """A random SAM's quality scores are noise that the default thresholds reject entirely (no masks at
    all), so random-weight runs, which exist to show shapes and timings, keep every mask instead.
    Explicit --pred-iou-thresh / --stability-score-thresh flags still win."""
    return replace(config, pred_iou_thresh=0.0, stability_score_thresh=0.0)
