"""Class-agnostic mask proposals: every proposal model by name, and the rule that makes masks disjoint.

A model is one ``ProposerSpec`` in ``PROPOSERS``; a family of models (SAM, SAM 2.1, ...) is one module
here with a ``ProposerFamily`` that builds, resizes and runs it. Adding a model of a known family is one
entry; adding a family is one file and its entries. Nothing outside this package knows which family runs.
Importing this package imports no network code (each family imports its package when it builds).
"""

from __future__ import annotations

from ..errors import OptionError
from . import deop_trained, mobile_sam, sam, sam2
from .base import MaskSet, Proposals, Proposer, ProposerFamily, ProposerSpec, resolve_overlaps, segment_boxes

PROPOSERS: dict[str, ProposerSpec] = {spec.name: spec for spec in (*sam.SPECS, *mobile_sam.SPECS, *sam2.SPECS,
                                                                    *deop_trained.SPECS)}


def get_proposer(name: str) -> ProposerSpec:
    if name not in PROPOSERS:
        raise OptionError(f"unknown proposal model {name!r}; choose from {', '.join(PROPOSERS)}")
    return PROPOSERS[name]


__all__ = ["PROPOSERS", "MaskSet", "Proposals", "Proposer", "ProposerFamily", "ProposerSpec", "get_proposer",
           "resolve_overlaps", "segment_boxes"]
