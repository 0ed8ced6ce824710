"""The errors a user can act on: the CLI prints them as one line, the app shows them as a message."""

from .images import ImageError
from .segmenter import DeviceOutOfMemory
from .timing import SegmentTimeout
from .vocabulary import VocabularyError
from .weights import WeightsError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ImageError, VocabularyError, WeightsError, SegmentTimeout, DeviceOutOfMemory, ValueError, OSError,
)

__all__ = ["USER_ERRORS", "DeviceOutOfMemory", "ImageError", "SegmentTimeout", "VocabularyError", "WeightsError"]
