"""The released checkpoint's parameter names (detectron2's, the official modules') mapped to ours.

The checkpoint's ``model`` dict holds the whole trained model; each of our modules loads one part of it.
A part is a name, the detectron2 prefixes it owns, and a renaming function from a detectron2 name to the
name in our module for that part (its ``load_state_dict`` keys). ``PARTS`` is the registry:

- ``Part(name, prefixes, rename)``; ``rename(detectron2_key) -> our_key`` (a pure function of the name).
- ``register_part(name, prefixes, rename)`` adds or replaces a part, so a module built elsewhere (the
  trained CLIP, the learned prompts, the classification-anchor decoder) plugs its own map in without
  touching this file. ``prefix_renamer(((old, new), ...))`` makes a ``rename`` from ordered prefix pairs
  (first match wins); ``strip_prefix(prefix)`` the simplest one.
- ``split_state(state) -> {part name: {detectron2 key: tensor}}``: every key to exactly one part; a key no
  part owns is an error naming it.
- ``part_state(state, name) -> {our key: tensor}``: one part renamed, ready for a strict
  ``load_state_dict``.
- ``expected_keys() -> {detectron2 key: shape}``: the released checkpoint's tensors
  (``model_final_keys.txt``).

The parts, with the prefixes read from the official module structure (that file's header cites the lines):
``generator`` (``backbone.``, ``sem_seg_head.``), ``clip`` (``clip_adapter.clip_model.``), ``prompt``
(``clip_adapter.prompt_learner.``, ``clip_adapter.non_object_embedding``), ``cal`` (``decoder.``,
``query_embedding.``) and ``criterion`` (``criterion.``: the training loss's class weights, not needed to
run). Only the generator's renaming is ours to define here; the others start as ``strip_prefix`` of their
first prefix until their module registers its own.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEYS_FILE = Path(__file__).with_name("model_final_keys.txt")


@dataclass(frozen=True)
class Part:
    name: str
    prefixes: tuple[str, ...]
    rename: Callable[[str], str]

    def owns(self, key: str) -> bool:
        return any(key == p or key.startswith(p) for p in self.prefixes)


def prefix_renamer(pairs: tuple[tuple[str, str], ...]) -> Callable[[str], str]:
    """rename(key): the first (old, new) pair whose old prefix starts the key replaces it; a key matching
    no pair is a bug in the map (KeyError naming it)."""

    def rename(key: str) -> str:
        for old, new in pairs:
            if key.startswith(old):
                return new + key[len(old):]
        raise KeyError(f"no rename rule for {key!r}")

    return rename


def strip_prefix(prefix: str) -> Callable[[str], str]:
    return prefix_renamer(((prefix, ""),))


# Our MaskGenerator (generator.py): backbone as detectron2 names it; the head's pixel decoder and predictor
# one level up; the predictor's DETR decoder without the encoder-less ``transformer`` wrapper around it.
GENERATOR_PREFIXES = (
    ("backbone.", "backbone."),
    ("sem_seg_head.pixel_decoder.", "pixel_decoder."),
    ("sem_seg_head.predictor.transformer.decoder.", "predictor.decoder."),
    ("sem_seg_head.predictor.", "predictor."),
)

PARTS: dict[str, Part] = {}


def register_part(name: str, prefixes: tuple[str, ...], rename: Callable[[str], str] | None = None) -> Part:
    """Add or replace a part; `rename` defaults to stripping the first prefix."""
    part = Part(name, tuple(prefixes), rename or strip_prefix(prefixes[0]))
    for other in PARTS.values():
        if other.name != name and any(other.owns(p) or part.owns(q) for p in part.prefixes for q in other.prefixes):
            raise ValueError(f"part {name!r} overlaps part {other.name!r}")
    PARTS[name] = part
    return part


register_part("generator", ("backbone.", "sem_seg_head."), prefix_renamer(GENERATOR_PREFIXES))
register_part("clip", ("clip_adapter.clip_model.",))
register_part("prompt", ("clip_adapter.prompt_learner.", "clip_adapter.non_object_embedding"),
              prefix_renamer((("clip_adapter.prompt_learner.", ""), ("clip_adapter.", ""))))
register_part("cal", ("decoder.", "query_embedding."), prefix_renamer((("decoder.", "decoder."),
                                                                        ("query_embedding.", "query_embedding."))))
register_part("criterion", ("criterion.",))


def part_of(key: str) -> str:
    for part in PARTS.values():
        if part.owns(key):
            return part.name
    raise KeyError(f"{key!r} belongs to no part of the DeOP model ({', '.join(PARTS)})")


def split_state(state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The checkpoint's tensors by part, under their detectron2 names; every part present, maybe empty."""
    out: dict[str, dict[str, Any]] = {name: {} for name in PARTS}
    for key, value in state.items():
        out[part_of(key)][key] = value
    return out


def part_state(state: Mapping[str, Any], name: str) -> dict[str, Any]:
    """One part of the checkpoint under our module's names."""
    part = PARTS[name]
    return {part.rename(k): v for k, v in state.items() if part.owns(k)}


_LINE = re.compile(r"^(\S+) \[([0-9,]*)\]$")


@functools.cache
def expected_keys() -> dict[str, tuple[int, ...]]:
    """The released checkpoint's tensors and shapes, in its order (``model_final_keys.txt``)."""
    out: dict[str, tuple[int, ...]] = {}
    for number, line in enumerate(KEYS_FILE.read_text().splitlines(), start=1):
        if not line or line.startswith("#"):
            continue
        found = _LINE.match(line)
        if found is None:
            raise ValueError(f"{KEYS_FILE.name} line {number} is not 'name [d1,d2,...]': {line!r}")
        out[found.group(1)] = tuple(int(d) for d in found.group(2).split(",") if d)
    return out
