"""DeOP open-vocabulary segmentation: SAM proposals classified from one dense CLIP pass.

    from deop import Segmenter, SegmenterConfig
    seg = Segmenter(SegmenterConfig(device="cpu", random_weights=True))
    result = seg.segment(image, "cat, dog, grass", method="both")
"""

from .config import PROPOSAL_PRESETS, ProposalConfig, SegmenterConfig, SegmentOptions
from .result import MethodResult, Segment, SegmentationResult
from .segmenter import Segmenter
from .vocabulary import Vocabulary, VocabularyError, parse_vocabulary

__version__ = "0.1.0"

__all__ = [
    "PROPOSAL_PRESETS", "MethodResult", "ProposalConfig", "Segment", "SegmentOptions", "SegmentationResult",
    "Segmenter", "SegmenterConfig", "Vocabulary", "VocabularyError", "parse_vocabulary", "__version__",
]
