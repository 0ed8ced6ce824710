"""The classification methods as objects: what each needs, which cached stage gives its image embeddings,
and how it labels a request. The pipeline runs any of them the same way; "both" is a pair of them.

Adding a method is one class and one entry in ``METHODS``; ``RUNS`` says what each ``method=`` choice
runs, and a run of two methods is a comparison (the second's cost over the first's is the speed-up).
Importing this module imports no torch: each method imports the classification code when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from .cache import Stage
    from .pipeline import Request, Segmenter, TimedValue


@dataclass
class Labels:
    """One method's answer at the working size. probs: [N, C] per segment (None without segments);
    similarity: [C, gh, gw] class-patch cosine similarity when the method has the dense map."""

    label_map: np.ndarray
    probs: torch.Tensor | None = None
    similarity: np.ndarray | None = None


@dataclass(frozen=True)
class Method:
    """name: the ``method=`` value; uses_proposals: needs SAM's masks (and its segments are listed);
    image_reads_proposals: its image stage itself depends on the proposals (the trained model runs the masks
    inside CLIP), so that stage is cached per proposals, not per image, and a segment added later cannot be
    classified from it."""

    name: str
    title: str
    uses_proposals: bool
    description: str = ""
    image_reads_proposals: bool = False

    def stage(self, segmenter: Segmenter, request: Request) -> Stage:
        """The method's cached image stage (reported as ``image_encoding``), not yet looked up."""
        raise NotImplementedError

    def encode(self, segmenter: Segmenter, request: Request) -> tuple[TimedValue, bool]:
        """The image stage's value and whether it was reused."""
        return self.stage(segmenter, request).get()

    def classify(self, request: Request, encoded: Any) -> Labels:
        raise NotImplementedError

    def stage_key(self, segmenter: Segmenter, request: Request, *parts: Any) -> tuple:
        """The key of this method's cached image stage: the image's, or, when the stage reads the proposals,
        the proposals' key (everything they depend on), then `parts` (the model's own key)."""
        if self.image_reads_proposals:
            return (self.name, *segmenter.proposals_key(request.key, request.options), *parts)
        return (self.name, request.key, *parts)


def _proposal_label_map(request: Request, probs: torch.Tensor, fill: np.ndarray | None) -> np.ndarray:
    """Each segment's pixels get its label (or -1 below the threshold); with `fill`, pixels no segment
    covers take the dense per-pixel label instead of -1."""
    from .classify import labels_from

    seg_label, _ = labels_from(probs, request.options.none_threshold)
    segment_map = request.proposals.segment_map
    label_map = np.append(seg_label, -1).astype(np.int32)[segment_map]  # index -1 → the appended "none"
    if fill is not None:
        label_map = np.where(segment_map >= 0, label_map, fill).astype(np.int32)
    return label_map


class DenseMap(Method):
    """Methods that read one dense CLIP pass: the pass is the cached stage; the class-patch similarity
    (the heatmaps) comes with them."""

    def stage(self, segmenter: Segmenter, request: Request) -> Stage:
        return segmenter.features_stage(request.work, request.options, request.key)

    def _similarity(self, request: Request, features: torch.Tensor) -> tuple[torch.Tensor, np.ndarray | None]:
        from .classify import dense_labels, dense_similarity

        sim = dense_similarity(features, request.text)
        opts = request.options
        fill = None
        if not self.uses_proposals or opts.fill_uncovered:
            fill = dense_labels(sim, request.work.shape[:2], opts.logit_scale, opts.none_threshold)[0]
        return sim, fill


class OnePass(DenseMap):
    def classify(self, request: Request, encoded: torch.Tensor) -> Labels:
        from .classify import pool_segments, probabilities

        sim, fill = self._similarity(request, encoded)
        probs = probabilities(pool_segments(encoded, request.proposals), request.text, request.options.logit_scale)
        return Labels(_proposal_label_map(request, probs, fill), probs, sim.cpu().numpy())


class Dense(DenseMap):
    def classify(self, request: Request, encoded: torch.Tensor) -> Labels:
        sim, fill = self._similarity(request, encoded)
        return Labels(fill, None, sim.cpu().numpy())


class Crop(Method):
    def stage(self, segmenter: Segmenter, request: Request) -> Stage:
        return segmenter.crops_stage(request.work, request.proposals, request.options, request.key,
                                     request.deadline)

    def classify(self, request: Request, encoded: torch.Tensor) -> Labels:
        from .classify import probabilities

        probs = probabilities(encoded, request.text, request.options.logit_scale)
        return Labels(_proposal_label_map(request, probs, None), probs)


class Trained(Method):
    """The paper's trained model on its generator's 100 queries (``deop.trained``): CLIP runs once with the
    queries' masks inside block 11, CAL gives each query its embedding; a segment's probabilities are its
    query's, the label map the official combination of all 100 queries' masks and probabilities."""

    def stage(self, segmenter: Segmenter, request: Request) -> Stage:
        from .cache import Stage
        from .trained.run import encode_trained

        trained = segmenter.trained
        return Stage(segmenter.stages["trained"], self.stage_key(segmenter, request, trained.key),
                     lambda: encode_trained(trained, request.proposals))

    def classify(self, request: Request, encoded: Any) -> Labels:
        from .trained.run import classify_trained

        label_map, probs, similarity = classify_trained(encoded, request.proposals, request.text,
                                                        request.work.shape[:2])
        return Labels(label_map, probs, similarity)


METHODS: dict[str, Method] = {m.name: m for m in (
    OnePass("one-pass", "One pass (DeOP)", True, "each mask pooled from one dense CLIP pass over the image"),
    Crop("crop", "Crop baseline", True, "one CLIP pass per masked crop, as OVSeg and SimBaseline do"),
    Dense("dense", "Dense (no SAM)", False, "every pixel classified from the dense CLIP map, no proposals"),
    Trained("deop-trained", "DeOP (trained)", True, "what one-pass runs with --model deop-trained: CLIP once "
            "with the trained generator's masks in block 11, CAL per query, the official mask-weighted "
            "combination", True),
)}

# What each ``method=`` choice runs for each model; a pair is compared side by side (the same proposals and
# text). With the trained model, "one-pass" is its own classifier and "crop" the crop baseline on its
# generator's proposals with the same CLIP weights and learned prompts (the paper's speed comparison).
RUNS_BY_MODEL: dict[str, dict[str, tuple[str, ...]]] = {
    "training-free": {"one-pass": ("one-pass",), "crop": ("crop",), "both": ("one-pass", "crop"),
                      "dense": ("dense",)},
    "deop-trained": {"one-pass": ("deop-trained",), "crop": ("crop",), "both": ("deop-trained", "crop")},
}
RUNS: dict[str, tuple[str, ...]] = RUNS_BY_MODEL["training-free"]
METHOD_CHOICES: tuple[str, ...] = tuple(RUNS)
METHOD_TITLES: dict[str, str] = {name: m.title for name, m in METHODS.items()}


def methods_of(choice: str, model: str = "training-free") -> tuple[Method, ...]:
    from .errors import OptionError

    runs = RUNS_BY_MODEL.get(model)
    if runs is None:
        raise OptionError(f"unknown model {model!r}; choose from {', '.join(RUNS_BY_MODEL)}")
    if choice not in runs:
        if choice in RUNS:
            raise OptionError(f"method {choice!r} is not available with the {model} model; choose from "
                              f"{', '.join(runs)}")
        raise OptionError(f"unknown method {choice!r}; choose from {', '.join(runs)}")
    return tuple(METHODS[name] for name in runs[choice])
