"""The literal prefilter in front of rule regexes: it may only rule out texts the
regex cannot match."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing_middleware._literals import prefilter


@pytest.mark.parametrize(
    ("pattern", "flags", "literals", "fold"),
    [
        (r"\bSELECT\b|\bSQL\b", 0, ("SELECT", "SQL"), False),
        (r"ab(?:cd|ef)g", 0, ("abcd", "abef"), False),
        (r"(?:foo)?bar", 0, ("bar",), False),
        (r"(?i)Refund|charge ?back", 0, ("charge", "refund"), True),
        (r"hello\s+there", re.IGNORECASE, ("hello",), True),
        (r"(?:ab){2,}", 0, ("ab",), False),
        (r"[a-z]+ing\b", 0, ("ing",), False),
    ],
)
def test_literals_every_match_contains(
    pattern: str, flags: int, literals: tuple[str, ...], fold: bool
) -> None:
    found = prefilter(re.compile(pattern, flags))
    assert found is not None
    assert (found.literals, found.fold) == (literals, fold)


@pytest.mark.parametrize(
    "pattern",
    [
        r"\d+",  # classes only
        r"x*",  # may match empty
        r"(?:abc)?",  # optional
        r"ab|c",  # one branch gives a single character
        r"(?i:abc)def",  # scoped flags: not followed
        r"a|b|c|d|e|f|g|h|i|j|k|l|m|n|o|p|q",
        "(?i)stra\u00dfe",  # folded non-ASCII literal
    ],
)
def test_no_prefilter_when_no_literal_is_certain(pattern: str) -> None:
    assert prefilter(re.compile(pattern)) is None


def test_folded_literals_never_rule_out_non_ascii_text() -> None:
    # Case folding pairs the Kelvin sign with "k": the lowered text has no "kelvin".
    pattern = re.compile(r"(?i)kelvin")
    text = "\u212aelvin scale"
    assert pattern.search(text) is not None
    found = prefilter(pattern)
    assert found is not None
    assert found.might_match(text)
    assert not found.might_match("celsius scale")


PIECES = [
    "ab",
    "SQL",
    "sel",
    r"\b",
    r"\s+",
    r"\d",
    "[a-c]",
    ".",
    "(?:ab|cd)",
    "(?:x|yz)?",
    "(?:q)+",
    "(?:ab){1,2}",
    "(?=a)",
    "(?!b)",
    "(?:e|ab)",
    "(a)",
    "b*",
]


@settings(max_examples=400, deadline=None)
@given(
    pieces=st.lists(st.sampled_from(PIECES), min_size=1, max_size=5),
    alternative=st.lists(st.sampled_from(PIECES), max_size=3),
    ignore_case=st.booleans(),
    texts=st.lists(st.text(alphabet="abcdeqxyzSQLABE \u212a\u0131", max_size=24), max_size=8),
)
def test_prefilter_never_rules_out_a_match(
    pieces: list[str], alternative: list[str], ignore_case: bool, texts: list[str]
) -> None:
    source = "".join(pieces) + ("|" + "".join(alternative) if alternative else "")
    pattern = re.compile(source, re.IGNORECASE if ignore_case else 0)
    found = prefilter(pattern)
    if found is None:
        return
    for text in [*texts, *found.literals]:
        if pattern.search(text) is not None:
            assert found.might_match(text), (source, text)
