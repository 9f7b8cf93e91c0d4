"""Search by words: synonyms, negations, phrases, and one-line errors for unknown words."""

from __future__ import annotations

import pytest

from fashiondvc.errors import FashionError
from fashiondvc.labels import LABEL_SETS
from fashiondvc.words import SYNONYMS, TextQuery, parse_text, vocabulary

ATTRS20 = LABEL_SETS["attrs20"]


@pytest.mark.parametrize(("text", "include", "exclude"), [
    ("red and white stripes, no scarf", ("red", "white", "pattern_stripe"), ("scarf",)),
    ("striped shirt without tie or collar", ("pattern_stripe",), ("necktie", "collar")),
    ("Tartan", ("pattern_plaid",), ()),
    ("plaid skirt with no scarf but a collar", ("pattern_plaid", "collar"), ("scarf",)),
    ("grey polka dots", ("gray", "pattern_spot"), ()),
    ("many colours; not solid", ("many_colors",), ("pattern_solid",)),
    ("a neck tie", ("necktie",), ()),
    ("pattern_floral, no pattern_stripe", ("pattern_floral",), ("pattern_stripe",)),
])
def test_words_become_attribute_filters(text, include, exclude):
    assert parse_text(text, ATTRS20) == TextQuery(include, exclude)


def test_every_synonym_names_a_binary_attribute_and_no_word_means_two():
    from fashiondvc.labels import BINARY_ATTRIBUTES

    assert set(SYNONYMS) <= set(BINARY_ATTRIBUTES)
    owners: dict[str, str] = {}
    for name, words in SYNONYMS.items():
        for word in words:
            assert owners.setdefault(word, name) == name, word


def test_only_the_models_attributes_are_known():
    colours = LABEL_SETS["colors11"]
    assert "striped" not in vocabulary(colours)
    with pytest.raises(FashionError) as raised:
        parse_text("red stripes", colours)
    message = str(raised.value)
    assert "\n" not in message and "'stripes'" in message and "crimson" in message


@pytest.mark.parametrize(("text", "fragment"), [
    ("sparkly red", "unknown word 'sparkly'"),
    ("a shirt", "names no attribute"),
    ("red, no red", "both for and against 'red'"),
    ("", "names no attribute"),
])
def test_bad_text_is_a_one_line_error(text, fragment):
    with pytest.raises(FashionError) as raised:
        parse_text(text, ATTRS20)
    assert fragment in str(raised.value) and "\n" not in str(raised.value)
