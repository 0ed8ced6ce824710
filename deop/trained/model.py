"""The paper's trained classifier on the generator's 100 queries: learned prompts, CLIP with learned positions
and mask-guided severance, CAL, and the official combination into a semantic map.

``DeopHead`` holds every trained part except the mask generator (``deop.trained.generator``); its state-dict
keys map one to one onto the released ``model_final.pth`` (``KEY_MAP``). ``TrainedClassifier`` is what the
model cache keeps: the head, its tokenizer, the learned-prompt text cache, and a ``ClipModel`` view of the
same CLIP for the crop baseline (CLIP was frozen in training, ``clip_adapter/utils.py`` 186-190: its weights
are OpenAI's, so the crops see plain CLIP; only the learned tables are new).

The final combination (``zero_shot_clipfeat_upsample_vit16_query2D_maskvit.py`` 317-319, 355-397): logits
``100 * F . [text; no-object]^T``; the mask logits are upsampled bilinearly to the padded input, cropped to
the image, sigmoid; the class scores are ``einsum("qc,qhw->chw", softmax(logits)[:, :-1], masks)``; the
evaluator resizes them to the original size (``sem_seg_postprocess``, bilinear) and takes the argmax.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..clip.prompts import LearnedPrompt
from .cal import Cal, proposal_masks
from .clip_vision import LearnedPositions, encode_masked
from .generator import padded_probabilities

LOGIT_SCALE = 100.0
CLIP_NAME = "ViT-B-16-quickgelu"  # OpenAI's ViT-B/16 needs open_clip's QuickGELU config

# detectron2's names in model_final.pth -> ours, as (official prefix, our prefix); a key takes the longest
# matching prefix. Source: the official module tree (see this package's modules and the report).
KEY_MAP: tuple[tuple[str, str], ...] = (
    ("clip_adapter.clip_model.visual.learned_position", "positions.input"),
    *((f"clip_adapter.clip_model.visual.transformer.resblocks.{b}.learned_position", f"positions.blocks.{b}")
      for b in (1, 2, 3, 4, 5)),
    ("clip_adapter.clip_model.", "clip."),
    ("clip_adapter.prompt_learner.prefix_prompt", "prompts.prefix"),
    ("clip_adapter.prompt_learner.start_signal", "prompts.start"),
    ("clip_adapter.prompt_learner.dot_signal", "prompts.dot"),
    ("clip_adapter.prompt_learner.end_signal", "prompts.end"),
    ("clip_adapter.prompt_learner.pad_signal", "prompts.pad"),
    ("clip_adapter.non_object_embedding", "non_object"),
    ("query_embedding.", "cal.queries."),
    ("decoder.layers.0.multihead_attn_my.", "cal.layer.cross_attn."),
    ("decoder.layers.0.", "cal.layer."),
    ("decoder.norm.", "cal.norm."),
    ("decoder.outlayer.multihead_attn_my.", "cal.out.read."),
    ("decoder.outlayer.norm1.", "cal.out.norm."),
    ("decoder.outlayer.", "cal.out."),
)


def _longest(key: str, pairs: tuple[tuple[str, str], ...]) -> tuple[str, str] | None:
    best = None
    for a, b in pairs:
        if (key == a or key.startswith(a)) and (best is None or len(a) > len(best[0])):
            best = (a, b)
    return best


def to_ours(key: str) -> str | None:
    """Our head's key for an official key, or None when it is not one of the head's."""
    pair = _longest(key, KEY_MAP)
    return None if pair is None else pair[1] + key[len(pair[0]):]


def to_official(key: str) -> str:
    pair = _longest(key, tuple((b, a) for a, b in KEY_MAP))
    if pair is None:
        raise KeyError(f"no official name for {key!r}")
    return pair[1] + key[len(pair[0]):]


def _register_parts() -> None:
    """Plug the head's renaming into the checkpoint's part registry (``deop.trained.keymap``), so that
    ``part_state(state, "clip" | "prompt" | "cal")`` gives our names."""
    from .keymap import PARTS, register_part

    def rename(key: str) -> str:
        mine = to_ours(key)
        if mine is None:
            raise KeyError(f"no rename rule for {key!r}")
        return mine

    for name in ("clip", "prompt", "cal"):
        register_part(name, PARTS[name].prefixes, rename)


_register_parts()


class DeopHead(nn.Module):
    """Every trained part but the generator, with CLIP as open_clip's ViT-B/16 module."""

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        self.clip = clip_model
        width = clip_model.visual.conv1.out_channels
        self.positions = LearnedPositions(width)
        self.prompts = LearnedPrompt(clip_model.token_embedding.weight.shape[1])
        dim = clip_model.text_projection.shape[-1]
        self.non_object = nn.Parameter(torch.randn(1, dim) * clip_model.transformer.width ** -0.5)
        self.cal = Cal()

    def official_state(self) -> dict[str, torch.Tensor]:
        """Our state under the checkpoint's names (for tests and synthetic checkpoints)."""
        return {to_official(k): v for k, v in self.state_dict().items()}

    def load_official(self, state: dict[str, torch.Tensor]) -> None:
        """Load the head's keys of a checkpoint's ``model`` state strictly: every key of ours must come,
        with its shape; keys that are not the head's are ignored (the generator's are PART A's)."""
        ours = self.state_dict()
        mapped = {}
        for key, value in state.items():
            mine = to_ours(key)
            if mine is None:
                continue
            if mine not in ours:
                raise KeyError(f"checkpoint key {key!r} has no place in the DeOP head (as {mine!r})")
            if tuple(value.shape) != tuple(ours[mine].shape):
                raise ValueError(f"checkpoint key {key!r} has shape {tuple(value.shape)}, expected "
                                 f"{tuple(ours[mine].shape)}")
            mapped[mine] = value.to(ours[mine].dtype)
        missing = sorted(to_official(k) for k in set(ours) - set(mapped))
        if missing:
            raise KeyError(f"checkpoint lacks {len(missing)} key(s) of the DeOP head: {', '.join(missing[:5])}")
        self.load_state_dict(mapped, strict=True)

    def text(self, tokenizer, names: list[str]) -> torch.Tensor:
        return self.prompts(self.clip, tokenizer, names)

    def none_embedding(self) -> torch.Tensor:
        return F.normalize(self.non_object.float(), dim=-1)

    def image(self, pixels: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        return encode_masked(self.clip, self.positions, pixels, mask_logits)

    def anchors(self, features: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        return self.cal(features, proposal_masks(mask_logits, features.shape[:2]))


def query_logits(anchors: torch.Tensor, text: torch.Tensor, none: torch.Tensor,
                 scale: float = LOGIT_SCALE) -> torch.Tensor:
    """[Q, C + 1] ``scale * anchors . [text; no-object]^T``."""
    return scale * anchors @ torch.cat([text, none]).to(anchors.dtype).T


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """[Q, C] softmax over the classes and no-object, no-object dropped (what the combination weighs)."""
    return logits.softmax(dim=-1)[:, :-1]


def semantic_scores(probs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """[C, H, W] ``einsum("qc,qhw->chw", probs, masks)``."""
    return torch.einsum("qc,qhw->chw", probs, masks.to(probs.dtype))


def image_masks(mask_logits: torch.Tensor, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """[Q, h, w] sigmoid masks at the model input: logits upsampled bilinearly to the padded input, cropped to
    the image's `size`, sigmoid."""
    return padded_probabilities(mask_logits.float(), padded, size)


def label_map(scores: torch.Tensor, shape: tuple[int, int], chunk: int = 16) -> np.ndarray:
    """The argmax over classes of the scores resized bilinearly to `shape`, computed a few classes at a time
    (150 classes at 1024 px would be half a gigabyte at once)."""
    best = label = None
    for start in range(0, len(scores), chunk):
        part = scores[start:start + chunk][None]
        if tuple(part.shape[-2:]) != tuple(shape):
            part = F.interpolate(part, size=shape, mode="bilinear", align_corners=False)
        value, index = part[0].max(dim=0)
        if best is None:
            best, label = value, index
        else:
            better = value > best
            best = torch.where(better, value, best)
            label = torch.where(better, index + start, label)
    if label is None:
        return np.full(shape, -1, dtype=np.int32)
    return label.cpu().numpy().astype(np.int32)


@dataclass
class TrainedEncoding:
    """The trained method's image stage for one image and its proposals; features: [gh, gw, D] normalised
    mask-guided CLIP features; anchors: [Q, D] CAL's normalised outputs; seconds: CLIP's and CAL's."""

    features: torch.Tensor
    anchors: torch.Tensor
    seconds: dict[str, float] = field(default_factory=dict)
    none: torch.Tensor | None = None  # the normalised no-object embedding
    size: tuple[int, int] = (0, 0)  # the resized image inside the model input
    padded: tuple[int, int] = (0, 0)  # the model input


@dataclass
class TrainedClassifier:
    """A loaded head with what runs it: the model cache's value for ``deop-trained``."""

    head: DeopHead
    tokenizer: Any
    device: torch.device
    weights: str  # "random" or the checkpoint's name
    clip_view: Any = None  # a deop.clip.model.ClipModel of the same CLIP, for the crop baseline
    _text: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def key(self) -> str:
        return f"deop-trained/{self.weights}/{self.device}"

    def names(self, names: list[str], max_entries: int = 20000) -> torch.Tensor:
        """[N, D] normalised learned-prompt embeddings, each name encoded once."""
        with self._lock:
            missing = list(dict.fromkeys(n for n in names if n not in self._text))
        if missing:
            with torch.inference_mode():
                encoded = self.head.text(self.tokenizer, missing)
            with self._lock:
                self._text.update(zip(missing, encoded))
                while len(self._text) > max_entries:
                    self._text.popitem(last=False)
        with self._lock:
            out = [self._text.get(n) for n in names]
        if any(t is None for t in out):  # evicted in between by another caller
            with torch.inference_mode():
                return self.head.text(self.tokenizer, names)
        return torch.stack(out) if out else torch.zeros((0, self.head.non_object.shape[-1]), device=self.device)

    def encode(self, pixels: torch.Tensor, mask_logits: torch.Tensor) -> TrainedEncoding:
        """CLIP's pass and CAL on one model input and its generator's mask logits, each timed."""
        from ..timing import synchronize

        seconds = {}
        with torch.inference_mode():
            synchronize(self.device)
            t0 = time.perf_counter()
            features = self.head.image(pixels.to(self.device), mask_logits.to(self.device))
            synchronize(self.device)
            t1 = time.perf_counter()
            anchors = self.head.anchors(features, mask_logits.to(self.device))
            synchronize(self.device)
            seconds = {"clip": t1 - t0, "cal": time.perf_counter() - t1}
        return TrainedEncoding(features, anchors, seconds)


def build_classifier(device: torch.device, random_weights: bool = False, state: dict[str, torch.Tensor] | None = None,
                     weights: str = "random") -> TrainedClassifier:
    """The head on `device`: seeded random weights, or the head's keys of a checkpoint's `state` (official
    names; loaded strictly, see ``DeopHead.load_official``), named `weights`."""
    import warnings

    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    from ..clip.model import ClipModel
    from ..weights import seeded_init

    tokenizer = open_clip.get_tokenizer(CLIP_NAME)
    with warnings.catch_warnings(), seeded_init():
        warnings.simplefilter("ignore")
        clip_model = open_clip.create_model(CLIP_NAME, pretrained=None)
        head = DeopHead(clip_model)
    head.prompts.init_signals(clip_model, tokenizer)
    if not random_weights:
        if state is None:
            raise ValueError("the trained model needs its checkpoint's state (or random weights)")
        head.load_official(state)
    head.eval().requires_grad_(False).to(device)
    view = ClipModel(head.clip, tokenizer, "deop-trained", None if random_weights else weights,
                     device, 224, tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD))
    return TrainedClassifier(head, tokenizer, device, "random" if random_weights else weights, view)
