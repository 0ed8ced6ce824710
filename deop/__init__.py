"""DeOP open-vocabulary segmentation: SAM proposals classified from one dense CLIP pass.

    from deop import Segmenter, SegmenterConfig
    seg = Segmenter(SegmenterConfig(device="cpu", random_weights=True))
    result = seg.segment(image, "cat, dog, grass", method="both")

The names below are imported on first use, so that ``import deop`` (and ``import deop.rle``, or
``python -m deop --help``) does not pay for torch, open_clip and segment_anything.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "PROPOSAL_PRESETS": ".config", "ProposalConfig": ".config", "SegmenterConfig": ".config",
    "SegmentOptions": ".config", "MethodResult": ".result", "Segment": ".result", "SegmentationResult": ".result",
    "Segmenter": ".pipeline", "Vocabulary": ".vocabulary", "VocabularyError": ".errors",
    "parse_vocabulary": ".vocabulary", "PROPOSERS": ".proposers",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'deop' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
