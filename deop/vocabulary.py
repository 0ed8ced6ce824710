"""Free-text vocabularies, as typed into the app's text box or given to ``--classes``.

Syntax:
  - Classes are separated by commas or new lines: ``cat, dog, grass``. Whitespace around a name is
    dropped and runs of whitespace inside it become one space.
  - ``person: man, woman, child`` is ONE class, "person", prompted with all four names (their CLIP
    embeddings are averaged). The colon binds to the last name before it: ``cat, dog: puppy`` is the
    classes cat and dog, dog with the synonym puppy. One colon per line.
  - ``@voc``, ``@coco``, ``@ade20k``, ``@cityscapes`` (any case) add a benchmark's classes.
  - ``#`` at the start of a line, or of an item after a comma, comments out the rest of the line.
  - Names are compared ignoring case. A repeated name, or a name that is a synonym of an earlier class,
    is merged into the earlier class; a synonym that an earlier class already uses stays with that
    class. Each of these adds a warning.
  - Full-width commas and colons (，、：) work as commas and colons.
  - Any script and emoji are kept; control characters and zero-width spaces are removed.
  - At most 1000 classes; a name longer than 200 characters is cut (with a warning).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .errors import VocabularyError
from .presets import PRESETS

MAX_CLASSES = 1000
MAX_NAME_CHARS = 200
EMPTY_MESSAGE = "Enter at least one class name, e.g. 'cat, dog, grass'."

_SEPARATORS = re.compile(r"([,，、:：])")
_COLONS = frozenset(":：")
# Control characters other than tab and line breaks (which are whitespace), lone surrogates, zero-width
# characters and bidirectional controls: pasted text carries them invisibly, they would make "cat" and
# "ca\u200bt" two classes, and an override (U+202E) reverses the legend's text around it.
_INVISIBLE = re.compile(r"[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\ud800-\udfff\u200b\u2060\ufeff"
                        r"\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_PRESET_LIST = ", ".join(f"@{name}" for name in PRESETS)




@dataclass(frozen=True)
class ClassSpec:
    """One output class. Synonyms let a class cover what one word misses ("person": man, woman)."""

    name: str
    prompts: tuple[str, ...]


@dataclass(frozen=True)
class Vocabulary:
    """Classes in the user's order; warnings say what the parser merged or cut.

    Warnings are left out of equality: two texts that give the same classes segment identically.
    """

    classes: tuple[ClassSpec, ...]
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.classes]

    def __len__(self) -> int:
        return len(self.classes)

    @classmethod
    def from_names(cls, names: Iterable[str], *, max_classes: int = MAX_CLASSES,
                   max_name_chars: int = MAX_NAME_CHARS) -> Vocabulary:
        """A vocabulary of names given one by one (no synonyms, no presets), deduplicated as parsing does.

        A name the text syntax would split or read as a preset or comment is refused rather than
        cleaned, so that ``to_text`` of the result parses back to it.
        """
        builder = _Builder(max_name_chars)
        for raw in names:
            name = _collapse(_clean(raw))
            if not name:
                continue
            if _SEPARATORS.search(name) or name[0] in "@#":
                raise VocabularyError(f"'{name}' can't be a class name: commas and colons separate names, "
                                      "and a leading '@' or '#' marks a preset or a comment.")
            builder.add(name)
        return builder.build(max_classes)

    def to_text(self) -> str:
        """The text syntax for these classes, one per line: parsing it gives this vocabulary back."""
        return "\n".join(f"{spec.name}: {', '.join(spec.prompts[1:])}" if len(spec.prompts) > 1 else spec.name
                         for spec in self.classes)


def parse_vocabulary(text: str, max_classes: int = MAX_CLASSES,
                     max_name_chars: int = MAX_NAME_CHARS) -> Vocabulary:
    """Parse the syntax in this module's docstring; raise VocabularyError for what the user must fix."""
    builder = _Builder(max_name_chars)
    for number, line in enumerate(_clean(text).splitlines(), start=1):
        heads, synonyms, colons = _split_line(line)
        if colons > 1:
            raise VocabularyError(f"Line {number} has more than one ':'; write one 'class: synonym, synonym' "
                                  "per line.")
        if colons and not heads[-1]:
            raise VocabularyError(f"Line {number}: put a class name before ':', as in 'person: man, woman'.")
        for i, head in enumerate(heads):
            own = [s for s in synonyms if s] if colons and i == len(heads) - 1 else []
            if not head:
                continue
            if head.startswith("@"):
                preset = _preset(head)
                if own:
                    raise VocabularyError(f"Line {number}: the preset '{head}' can't have synonyms.")
                for name in preset:
                    builder.add(builder.fit(name))
                continue
            for synonym in own:
                if synonym.startswith("@"):
                    raise VocabularyError(f"Line {number}: a preset ('{synonym}') can't be a synonym.")
            builder.add(builder.fit(head), [builder.fit(s) for s in own])
    return builder.build(max_classes)


def apply_templates(prompt: str, templates: Sequence[str]) -> list[str]:
    """The prompt in each template; the caller averages their embeddings, so every template must use it."""
    if not templates:
        raise ValueError("at least one template is needed: a class embedding is the mean over templates")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"templates without '{{}}' would give every class the same embedding: {bad}")
    return [t.format(prompt) for t in templates]


def _clean(text: str) -> str:
    # Removal comes before NFC: a removed character may have separated a letter from its accent.
    return unicodedata.normalize("NFC", _INVISIBLE.sub("", str(text)))


def _collapse(item: str) -> str:
    return " ".join(item.split())


def _split_line(line: str) -> tuple[list[str], list[str], int]:
    """Items before the first colon, items after it, and the number of colons before any comment."""
    heads: list[str] = []
    synonyms: list[str] = []
    colons = 0
    for i, part in enumerate(_SEPARATORS.split(line)):
        if i % 2:
            colons += part in _COLONS
            continue
        item = _collapse(part)
        if item.startswith("#"):
            break
        (synonyms if colons else heads).append(item)
    return heads, synonyms, colons


def _preset(item: str) -> tuple[str, ...]:
    names = PRESETS.get(item[1:].strip().casefold())
    if names is None:
        raise VocabularyError(f"Unknown preset '{item}'; the presets are {_PRESET_LIST}.")
    return names


def _listing(items: Iterable[str], limit: int = 5) -> str:
    unique = list(dict.fromkeys(items))
    shown = ", ".join(unique[:limit])
    return shown + (f" and {len(unique) - limit} more" if len(unique) > limit else "")


class _Builder:
    """Collects classes for one parse; each prompt (case-folded) belongs to the first class that used it."""

    def __init__(self, max_name_chars: int) -> None:
        if max_name_chars < 1:
            raise ValueError(f"max_name_chars must be at least 1, not {max_name_chars}")
        self.max_name_chars = max_name_chars
        self.names: list[str] = []
        self.prompts: list[list[str]] = []
        self.owner: dict[str, int] = {}
        self.truncated: list[str] = []
        self.repeated: list[str] = []
        self.merged: list[str] = []
        self.dropped: list[str] = []

    def fit(self, name: str) -> str:
        if len(name) <= self.max_name_chars:
            return name
        self.truncated.append(f"'{name[:30]}…'")
        return name[: self.max_name_chars].rstrip()

    def add(self, name: str, synonyms: Sequence[str] = ()) -> None:
        key = name.casefold()
        index = self.owner.get(key)
        if index is None:
            index = len(self.names)
            self.owner[key] = index
            self.names.append(name)
            self.prompts.append([name])
        elif self.names[index].casefold() == key:
            self.repeated.append(f"'{self.names[index]}'")
        else:
            self.merged.append(f"'{name}' → '{self.names[index]}'")
        for synonym in synonyms:
            owner = self.owner.get(synonym.casefold())
            if owner is None:
                self.owner[synonym.casefold()] = index
                self.prompts[index].append(synonym)
            elif owner != index:
                holder = self.names[owner]
                self.dropped.append(f"'{synonym}' (its own class)" if holder.casefold() == synonym.casefold()
                                    else f"'{synonym}' (in '{holder}')")

    def build(self, max_classes: int) -> Vocabulary:
        if max_classes < 1:
            raise ValueError(f"max_classes must be at least 1, not {max_classes}")
        if not self.names:
            raise VocabularyError(EMPTY_MESSAGE)
        if len(self.names) > max_classes:
            raise VocabularyError(f"{len(self.names)} classes were given; the limit is {max_classes}.")
        warnings = []
        if self.truncated:
            warnings.append(f"Names longer than {self.max_name_chars} characters were cut: "
                            f"{_listing(self.truncated)}.")
        if self.repeated:
            warnings.append(f"Repeated names were merged into their first use: {_listing(self.repeated)}.")
        if self.merged:
            warnings.append(f"Names that are synonyms of an earlier class were merged into it: "
                            f"{_listing(self.merged)}.")
        if self.dropped:
            warnings.append(f"Synonyms that belong to an earlier class were left with it: "
                            f"{_listing(self.dropped)}.")
        classes = tuple(ClassSpec(name, tuple(prompts)) for name, prompts in zip(self.names, self.prompts))
        return Vocabulary(classes, tuple(warnings))
