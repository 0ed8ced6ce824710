"""The vocabulary syntax users type, the benchmark presets, and the parser's guarantees on any text."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deop.presets import (
    ADE20K,
    CITYSCAPES,
    COCO,
    DEFAULT_TEMPLATES,
    PRESET_TITLES,
    PRESETS,
    TEMPLATES,
    VOC,
)
from deop.vocabulary import (
    EMPTY_MESSAGE,
    MAX_CLASSES,
    ClassSpec,
    Vocabulary,
    VocabularyError,
    apply_templates,
    parse_vocabulary,
)

SEPARATORS = ",:，、：\n\r"


def prompts(text: str, **kwargs) -> list[tuple[str, ...]]:
    return [spec.prompts for spec in parse_vocabulary(text, **kwargs).classes]


# Presets and templates

@pytest.mark.parametrize("names, size", [(VOC, 20), (COCO, 80), (ADE20K, 150), (CITYSCAPES, 19)])
def test_presets_have_their_benchmark_sizes_and_unique_names(names, size):
    assert len(names) == size
    assert len({n.casefold() for n in names}) == size
    assert all(n == " ".join(n.split()) and not set(n) & set(SEPARATORS + "@#") for n in names)


def test_presets_use_clip_friendly_spellings_in_dataset_order():
    assert {"potted plant", "tv monitor", "dining table", "motorbike", "aeroplane"} <= set(VOC)
    assert (COCO[0], COCO[-1], ADE20K[0], ADE20K[-1]) == ("person", "toothbrush", "wall", "flag")
    assert ADE20K.index("chest of drawers") == 44 and CITYSCAPES[:2] == ("road", "sidewalk")


def test_preset_tables_agree():
    assert dict(PRESETS) == {"voc": VOC, "coco": COCO, "ade20k": ADE20K, "cityscapes": CITYSCAPES}
    assert set(PRESET_TITLES) == set(PRESETS)
    assert PRESET_TITLES["voc"] == "PASCAL VOC (20)" and PRESET_TITLES["ade20k"] == "ADE20K (150)"
    with pytest.raises(TypeError):
        PRESETS["mine"] = ("cat",)  # type: ignore[index]


def test_templates():
    assert DEFAULT_TEMPLATES in TEMPLATES
    assert TEMPLATES["single"] == ("a photo of a {}.",)
    assert len(TEMPLATES["ensemble"]) == 7 and len(TEMPLATES["segmentation"]) == 10
    assert all(t.count("{}") == 1 for ts in TEMPLATES.values() for t in ts)


def test_apply_templates_formats_each_template():
    assert apply_templates("cat", ("a {}.", "the {}!")) == ["a cat.", "the cat!"]
    assert apply_templates("{odd} name", ("a {}.",)) == ["a {odd} name."]  # braces in a name are kept
    with pytest.raises(ValueError):
        apply_templates("cat", ())
    with pytest.raises(ValueError):
        apply_templates("cat", ("no placeholder",))


# Separators and whitespace

def test_commas_and_newlines_separate_classes():
    assert parse_vocabulary("cat, dog,grass\nsky\r\ntree\r\n").names == ["cat", "dog", "grass", "sky", "tree"]


def test_whitespace_is_stripped_and_collapsed_and_empty_items_skipped():
    assert parse_vocabulary("  big   cat ,\t, ,\n\n  red\tcar  ").names == ["big cat", "red car"]


def test_full_width_separators():
    assert parse_vocabulary("猫，狗、鸟").names == ["猫", "狗", "鸟"]
    assert prompts("人：男人，女人") == [("人", "男人", "女人")]


# Synonyms

def test_colon_line_is_one_class_with_the_name_first():
    v = parse_vocabulary("person: man, woman, child\ncar")
    assert v.classes == (ClassSpec("person", ("person", "man", "woman", "child")), ClassSpec("car", ("car",)))
    assert v.names == ["person", "car"] and len(v) == 2 and v.warnings == ()


def test_colon_binds_to_the_last_name_before_it():
    assert prompts("cat, dog: puppy, pup") == [("cat",), ("dog", "puppy", "pup")]


def test_repeated_synonyms_and_the_name_itself_are_merged_silently():
    v = parse_vocabulary("cat: kitty, Kitty, CAT, , kitty")
    assert prompts("cat: kitty, Kitty, CAT, , kitty") == [("cat", "kitty")] and v.warnings == ()
    assert prompts("cat:") == [("cat",)]


@pytest.mark.parametrize("text, fragment", [
    ("a: b: c", "more than one ':'"),
    (": man", "before ':'"),
    ("cat, : kitty", "before ':'"),
])
def test_malformed_synonym_lines_are_errors(text, fragment):
    with pytest.raises(VocabularyError, match=fragment):
        parse_vocabulary(text)


def test_error_names_the_line():
    with pytest.raises(VocabularyError, match="Line 3"):
        parse_vocabulary("cat\ndog\na: b: c")


# Presets in text

def test_presets_expand_case_insensitively_in_place():
    assert parse_vocabulary("@voc").names == list(VOC)
    assert parse_vocabulary("sky, @CoCo\n@ADE20K").names[:2] == ["sky", "person"]
    assert len(parse_vocabulary("@cityscapes")) == 19
    assert len(parse_vocabulary("@ade20k")) == 150


def test_overlapping_presets_merge_with_one_warning():
    v = parse_vocabulary("@voc, @coco")
    assert len(v) == len({n.casefold() for n in VOC + COCO})
    assert len(v.warnings) == 1 and "'person'" in v.warnings[0] and "more" in v.warnings[0]


@pytest.mark.parametrize("text", ["@pascal", "@", "@voc2012", "cat, @nope: thing", "@nope:"])
def test_unknown_preset_lists_the_presets(text):
    with pytest.raises(VocabularyError, match="Unknown preset .*@voc, @coco, @ade20k, @cityscapes"):
        parse_vocabulary(text)


def test_preset_with_colon():
    assert parse_vocabulary("@voc:").names == list(VOC)  # nothing to attach: the colon is harmless
    with pytest.raises(VocabularyError, match="can't have synonyms"):
        parse_vocabulary("@voc: vehicle")
    with pytest.raises(VocabularyError, match="can't be a synonym"):
        parse_vocabulary("animal: @coco")


def test_at_sign_inside_a_name_is_literal():
    assert parse_vocabulary("cat@home, e-mail @ sign").names == ["cat@home", "e-mail @ sign"]


# Comments

def test_comment_lines_and_items():
    text = "# pets\ncat\n   # indented comment: with, commas\ndog, # bird, fish\ncar # not a comment"
    assert parse_vocabulary(text).names == ["cat", "dog", "car # not a comment"]
    assert prompts("person: man, # woman: x") == [("person", "man")]


# Duplicates and merging

def test_duplicates_merge_into_the_first_with_a_warning():
    v = parse_vocabulary("cat, dog, Cat,  CAT \n big   cat, Big Cat")
    assert v.names == ["cat", "dog", "big cat"]
    assert len(v.warnings) == 1 and "'cat'" in v.warnings[0] and "'big cat'" in v.warnings[0]


def test_duplicates_union_their_synonyms():
    v = parse_vocabulary("cat: kitty\ndog\nCAT: tomcat, kitty")
    assert [s.prompts for s in v.classes] == [("cat", "kitty", "tomcat"), ("dog",)] and v.warnings


def test_name_that_is_an_earlier_synonym_is_merged_into_that_class():
    v = parse_vocabulary("person: man\nMan: guy\ndog")
    assert [s.prompts for s in v.classes] == [("person", "man", "guy"), ("dog",)]
    assert any("'Man' → 'person'" in w for w in v.warnings)


def test_synonym_already_used_stays_with_the_earlier_class():
    v = parse_vocabulary("man\nboy: lad\nperson: man, lad, guy")
    assert [s.prompts for s in v.classes] == [("man",), ("boy", "lad"), ("person", "guy")]
    assert any("'man' (its own class)" in w and "'lad' (in 'boy')" in w for w in v.warnings)


# Empty input and limits

@pytest.mark.parametrize("text", ["", "   ", " , ,\n,", "# only a comment", "\x00\u200b", "#a: b\n  #c"])
def test_empty_input_asks_for_a_class(text):
    with pytest.raises(VocabularyError) as err:
        parse_vocabulary(text)
    assert str(err.value) == EMPTY_MESSAGE == "Enter at least one class name, e.g. 'cat, dog, grass'."


def test_class_limit_counts_distinct_classes():
    names = [f"c{i}" for i in range(MAX_CLASSES + 1)]
    assert len(parse_vocabulary(", ".join(names[:MAX_CLASSES]))) == MAX_CLASSES
    with pytest.raises(VocabularyError, match=f"{MAX_CLASSES + 1} classes.*limit is {MAX_CLASSES}"):
        parse_vocabulary(", ".join(names))
    with pytest.raises(VocabularyError, match="4 classes.*limit is 3"):
        parse_vocabulary("a, b, c, d", max_classes=3)
    assert parse_vocabulary("a, A, a , b: a", max_classes=2).names == ["a", "b"]


def test_long_names_are_truncated_with_a_warning():
    v = parse_vocabulary("x" * 250 + ", cat: " + "y" * 199 + " z")
    assert v.names == ["x" * 200, "cat"] and v.classes[1].prompts[1] == "y" * 199  # the cut space is dropped
    assert len(v.warnings) == 1 and "longer than 200" in v.warnings[0]
    assert parse_vocabulary("abcdef", max_name_chars=3).names == ["abc"]


# Unicode

def test_unicode_and_emoji_are_kept():
    text = "猫, 🐕, 👩‍👩‍👧, Straße, ❤️, кошка"
    assert parse_vocabulary(text).names == ["猫", "🐕", "👩\u200d👩\u200d👧", "Straße", "❤️", "кошка"]


def test_text_is_nfc_normalised_so_equal_looking_names_merge():
    v = parse_vocabulary("cafe\u0301, café")
    assert v.names == ["café"] and v.names[0] == "caf\u00e9" and v.warnings


def test_control_and_zero_width_characters_are_removed():
    assert parse_vocabulary("\ufeffca\x00t, d\x07o\u200bg, big\tred\x0bbus, e\x1b\u0301").names == [
        "cat", "dog", "big red", "bus", "é"]


# Vocabulary objects

def test_from_names_dedups_without_synonyms():
    v = Vocabulary.from_names(["cat", " Cat ", "red  car", "猫"])
    assert v.classes == (ClassSpec("cat", ("cat",)), ClassSpec("red car", ("red car",)),
                         ClassSpec("猫", ("猫",)))
    assert v.warnings and v == parse_vocabulary("cat\nred car\n猫")
    with pytest.raises(VocabularyError):
        Vocabulary.from_names(["a, b"])
    with pytest.raises(VocabularyError):
        Vocabulary.from_names(["@voc"])
    with pytest.raises(VocabularyError, match="at least one"):
        Vocabulary.from_names([" ", ""])
    assert Vocabulary.from_names(ADE20K).names == list(ADE20K)


def test_to_text_writes_one_class_per_line():
    v = parse_vocabulary("person: man, woman\ncar, @cityscapes")
    assert v.to_text().splitlines()[:3] == ["person: man, woman", "car", "road"]
    again = parse_vocabulary(v.to_text())
    assert again == v and again.warnings == ()


def test_equality_ignores_warnings_and_vocabularies_hash():
    a, b = parse_vocabulary("cat"), parse_vocabulary("cat, cat")
    assert a == b and a.warnings != b.warnings and hash(a) == hash(b)


# Properties

ODD_PIECES = st.sampled_from([
    ",", ":", "\n", "\r\n", "\r", " ", "  ", "\t", "#", "# ", "@", "@voc", "@COCO", "@ade20k", "@nope",
    "，", "、", "：", "\x00", "\x1b", "\x85", "\u2028", "\u200b", "\ufeff", "\ud800", "Cat", "cat", "CAT",
    "e\u0301", "é", "🐕", "👩\u200d👧", "=", "\u0338", "ß", "SS", "ss", "x" * 45,
])
ANY_TEXT = st.lists(st.one_of(ODD_PIECES, st.text(max_size=6)), max_size=40).map("".join)

CLEAN_NAME = (
    st.text(st.characters(exclude_categories=("Cc", "Cs", "Cf", "Zl", "Zp"), exclude_characters=",:，、：#@"),
            min_size=1, max_size=20)
    .map(lambda s: " ".join(unicodedata.normalize("NFC", s).split()))
    .filter(bool)
)
FAST = settings(max_examples=200, deadline=None)


def dedup(names: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    for n in names:
        seen.setdefault(n.casefold(), n)
    return list(seen.values())


@FAST
@given(text=ANY_TEXT, max_classes=st.integers(1, 30), max_name_chars=st.integers(1, 40))
def test_any_text_gives_a_clean_vocabulary_or_a_vocabulary_error(text, max_classes, max_name_chars):
    try:
        v = parse_vocabulary(text, max_classes=max_classes, max_name_chars=max_name_chars)
    except VocabularyError as err:
        assert str(err) and "\n" not in str(err)
        return
    assert 1 <= len(v) <= max_classes
    assert len({n.casefold() for n in v.names}) == len(v.names)
    every = [p for spec in v.classes for p in spec.prompts]
    assert len({p.casefold() for p in every}) == len(every)  # a prompt belongs to one class
    for spec in v.classes:
        assert spec.prompts[0] == spec.name
    for p in every:
        assert p and p == " ".join(p.split()) and len(p) <= max_name_chars
        assert not set(p) & set(SEPARATORS) and p[0] not in "@#"
        assert unicodedata.is_normalized("NFC", p)
    again = parse_vocabulary(v.to_text(), max_classes=max_classes, max_name_chars=max_name_chars)
    assert again == v and again.warnings == ()


@FAST
@given(names=st.lists(CLEAN_NAME, min_size=1, max_size=30))
def test_clean_names_come_back_deduplicated_in_order(names):
    expected = dedup(names)
    assert parse_vocabulary(", ".join(names)).names == expected
    assert parse_vocabulary("\n".join(names)).names == expected
    assert Vocabulary.from_names(names).names == expected


@FAST
@given(lines=st.lists(st.tuples(CLEAN_NAME, st.lists(CLEAN_NAME, max_size=4)), min_size=1, max_size=12))
def test_to_text_round_trips(lines):
    v = parse_vocabulary("\n".join(f"{name}: {', '.join(syns)}" for name, syns in lines))
    heads = [name for name, _ in lines]
    assert {n.casefold() for n in v.names} <= {n.casefold() for n in heads}
    assert v.warnings or v.names == heads
    again = parse_vocabulary(v.to_text())
    assert again == v and again.warnings == () and again.to_text() == v.to_text()


@pytest.mark.parametrize("control", ["\u202e", "\u202d", "\u2066", "\u2067", "\u2068", "\u2069", "\u200e", "\u200f",
                                     "\u061c", "\u202a"])
def test_bidirectional_controls_are_removed_from_names(control):
    """An override (U+202E) kept in a class name reverses the legend's text after it."""
    vocab = parse_vocabulary(f"cat{control}, {control}dog: pup{control}py")
    assert vocab.names == ["cat", "dog"] and vocab.classes[1].prompts == ("dog", "puppy")
