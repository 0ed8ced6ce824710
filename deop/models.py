"""The one place where loaded models live, and the device they run on.

Loading ViT-B/16 CLIP and SAM vit_b takes seconds and about a gigabyte; every Segmenter, CLI run and app
session shares them through ``MODELS``, keyed by what they are (name, weights, device, input size). Each
model loads under its own lock, so a second user asking for a model that is loading waits for it,
while requests for models already loaded go on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import OptionError

if TYPE_CHECKING:
    import torch

    from .clip.model import ClipModel
    from .proposers import Proposer

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_WARNING = "RANDOM WEIGHTS: models are randomly initialised, labels are meaningless"


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" means CUDA when present, then Apple's MPS, else the CPU; an unavailable GPU is an error."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise OptionError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise OptionError("device 'mps' was asked for but Apple's MPS is not available; use --device cpu or auto")
    return device


class ModelCache:
    """Loaded models by key; each key is built once even under concurrent calls, under its own lock."""

    def __init__(self) -> None:
        self._models: dict[tuple, Any] = {}
        self._locks: dict[tuple, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._models:
                return self._models[key]
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                if key in self._models:
                    return self._models[key]
            log.info("loading %s", key)
            value = build()
            with self._lock:
                self._models[key] = value
            return value

    def clip(self, name: str, pretrained: str | None, device: torch.device, precision: str = "float32") -> ClipModel:
        """The model at `precision` (``deop.precision``): every precision shares the one float32 model."""
        from dataclasses import replace

        from .clip.model import build_clip

        model = self.get(("clip", name, pretrained, str(device)), lambda: build_clip(name, pretrained, device))
        return model if precision == "float32" else replace(model, precision=precision)

    def proposer(self, name: str, device: torch.device, random_weights: bool = False,
                 checkpoint_dir: str | Path | None = None, download: bool = True,
                 input_size: int | None = None, checkpoint: str | None = None) -> Proposer:
        """A proposal model (``deop.proposers.PROPOSERS``) on `device`, its encoder run at `input_size`
        (weights shared with the full-size model); `checkpoint`: a file the user gave (the trained model's)."""
        from .casts import cast_once
        from .proposers import Proposer, get_proposer

        spec = get_proposer(name)
        folder = Path(checkpoint_dir) if checkpoint_dir else None
        extra = {"checkpoint": checkpoint} if checkpoint else {}
        key = ("proposer", name, random_weights, str(device), str(checkpoint_dir), *extra.values())
        full = self.get(key, lambda: cast_once(spec.family.build(spec, random_weights, folder, download,
                                                                 **extra).to(device)))
        size = spec.input_size_for(input_size or spec.family.input_size(full))
        if size == spec.family.input_size(full):
            return Proposer(spec, full)
        return Proposer(spec, self.get((*key, size), lambda: spec.family.at_input_size(full, size)))

    def trained(self, device: torch.device, random_weights: bool = False, checkpoint: str | None = None,
                checkpoint_dir: str | Path | None = None, download: bool = True) -> Any:
        """The paper's trained classifier (``deop.trained``: learned prompts, CLIP with learned positions,
        CAL) on `device`, from the released checkpoint or seeded random weights."""
        from .trained.run import load_classifier

        key = ("deop-trained", random_weights, str(device), None if random_weights else str(checkpoint),
               None if random_weights else str(checkpoint_dir))
        return self.get(key, lambda: load_classifier(device, random_weights, checkpoint,
                                                     str(checkpoint_dir) if checkpoint_dir else None, download))

    def clear(self) -> None:
        with self._lock:
            self._models.clear()

    def __len__(self) -> int:
        return len(self._models)


MODELS = ModelCache()
