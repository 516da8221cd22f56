"""The classifier's word pass in C (``routing_middleware/_wordscan.c``) against the
Python path it stands in for; skipped when the extension was not built."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing_middleware import classify
from tests.core.child import assert_runs

WordScan = classify._WordScan
pytestmark = pytest.mark.skipif(WordScan is None, reason="the C word pass is not built")

PHRASES = ((1, b"step by step"), (16, b"one word"))


def _python_counts(lowered: str) -> tuple[list[int], frozenset[str], bytes | None]:
    cache = classify._WordCache(native=False)
    split = classify._words(lowered)
    cache = classify._learn(cache, split)
    found = [cache.found[w] for w in cache.cues.intersection(split)]
    if any(cue.folded for cue in found):
        found = classify._unfolded(lowered, found)
    markers = frozenset(m for cue in found for m in cue.markers)
    return classify._cue_counts(lowered, found), markers, split[0] if split else None


def _native_counts(lowered: str) -> tuple[list[int], frozenset[str], bytes | None]:
    classify._known = classify._WordCache(native=True)
    return classify._text_cues(lowered)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \t\n ",
        "Explain step by step",
        "a\x00b analyze\x00 design",  # NUL is a word byte, as bytes.split() has it
        "résumé naïve analyse, ANALYZE; design-review trade-off",
        "abcdefgh abcdefghi abcdefghij abcdefgh1 abcdefgh",  # 8 and more bytes
        "refactoring refactorings refactored refactor",
        "x" * 5000 + " design " + "é" * 3000,  # past the C side's stack buffer
        "prove the lemma; compute the integral \\int x dx = 3^2",
        "\ud800 lone surrogate design",
        "one word: translate it",
    ],
)
def test_the_c_pass_counts_as_the_python_path(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(classify, "_known", classify._known)
    lowered = text.lower()
    assert _native_counts(lowered) == _python_counts(lowered)
    assert _native_counts(lowered) == _python_counts(lowered)  # every word known now


_WORDS = sorted(
    {
        *(word for _, phrases in classify._PHRASES for p in phrases for word in p.split()),
        *(marker.strip() for marker in classify._CODE_MARKERS),
        *("analyze", "design", "prove", "tax", "tl;dr", "big-o", "lemma", "translate", "hi"),
        *("tax2020", "design3", "analyze42", "analyzé", "résumé", "İ", "ß", "ǅ"),
        *("abcdefgh", "abcdefghi", "abcdefg\x00", "\x00abcdefg"),  # 8 bytes, and past
    }
)
_SEPARATORS = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\xa0", "\u2028"]
_PIECE = st.one_of(
    st.sampled_from(_WORDS),
    st.sampled_from(_SEPARATORS + list(".,;:!?()`={}\x00-+#_'")),
    st.text(max_size=12),  # any code point, NUL and lone surrogates included
    st.integers(0, 10**15).map(str),
    st.tuples(st.sampled_from(["x", "é", "0", "7", "a1", "\ud800"]), st.integers(1, 600)).map(
        lambda pair: pair[0] * pair[1]  # long words, past the stack buffer too
    ),
)
#: One word cache for every example, so a text also meets words of the ones before.
_SHARED: list[classify._WordCache] = []


@given(st.lists(_PIECE, max_size=40).map("".join))
def test_the_c_pass_counts_as_the_python_path_on_any_text(text: str) -> None:
    lowered = text.lower()
    expected = _python_counts(lowered)
    saved = classify._known
    try:
        assert _native_counts(lowered) == expected  # every word new
        assert classify._text_cues(lowered) == expected  # every word known
        classify._known = _SHARED[0] if _SHARED else classify._WordCache(native=True)
        assert classify._text_cues(lowered) == expected
        _SHARED[:] = [classify._known]
    finally:
        classify._known = saved


def test_many_words_grow_the_table_and_stay_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(classify, "_known", classify._known)
    rng = random.Random(3)
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randrange(1, 14)))
        for _ in range(6000)
    ]
    text = " ".join(words) + " analyze design prove"
    classify._known = classify._WordCache(native=True)
    first = classify._text_cues(text)
    assert len(classify._known.scan) == len({w.encode() for w in text.split()})
    assert first == classify._text_cues(text) == _python_counts(text)


@pytest.mark.parametrize("length", range(1, 26))
def test_a_word_added_is_found_whatever_its_length(length: int) -> None:
    # ``add`` hashes a word as it is given, the pass as it folds it (with zeros after
    # it): both must agree at every length around the eight-byte chunks.
    word = bytes(97 + i % 26 for i in range(length))
    scan = WordScan(classify._FOLD_TABLE, ())
    scan.add(word, 0, 0, 0, False)
    scan.add(b"x", 0, 0, 0, False)
    text = b"x " + word + b" x " + word
    assert scan.scan(text)[0] is not None  # no word unseen
    assert isinstance(scan.features(text.decode()), tuple)
    assert scan.scan(text + b" " + word + b"z")[1] == [word + b"z"]


def test_a_word_seen_then_a_cue_counts_once_per_text() -> None:
    scan = WordScan(classify._FOLD_TABLE, PHRASES)
    scan.add(b"step", 0, 1, 0, False)
    scan.add(b"design", 1, 0, 0, False)
    scan.add(b"one", 0, 2, 0, False)
    scan.add(b"by", 0, 0, 0, False)
    scan.add(b"word", 0, 0, 0, False)
    counts, markers, folded, first = scan.scan(b"design design step by step one word")
    assert counts[1] == 2  # design once, the phrase once
    assert counts[16] == 1
    assert (markers, folded, first) == (0, False, b"design")
    assert scan.scan(b"design zebra")[:2] == (None, [b"zebra"])
    assert len(scan) == 5


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="256-byte"):
        WordScan(b"short", ())
    with pytest.raises(ValueError, match="64 phrases"):
        WordScan(classify._FOLD_TABLE, tuple((1, b"p") for _ in range(65)))
    with pytest.raises(TypeError, match="pairs"):
        WordScan(classify._FOLD_TABLE, (("x", b"p"),))
    with pytest.raises(OverflowError):  # before: a SystemError from scan() once found
        WordScan(classify._FOLD_TABLE, ((1 << 70, b"p"),))
    scan = WordScan(classify._FOLD_TABLE, ())
    with pytest.raises(TypeError, match="bytes"):
        scan.scan("text")  # type: ignore[arg-type]


def test_a_word_scan_not_initialised_raises_instead_of_crashing() -> None:
    # In a child process: before the fix this was a segmentation fault.
    code = (
        "from routing_middleware._wordscan import WordScan\n"
        "for call in (lambda s: s.scan(b'a b'), lambda s: s.add(b'a', 1, 0, 0, False)):\n"
        "    try:\n"
        "        call(WordScan.__new__(WordScan))\n"
        "    except RuntimeError as e:\n"
        "        assert 'not initialised' in str(e), e\n"
        "    else:\n"
        "        raise AssertionError('no error')\n"
    )
    assert_runs(code)


def _python_features(text: str) -> tuple[int, ...] | None:
    """What ``WordScan.features`` gives, read by the Python path's own parts."""
    if not text.isascii():
        return None
    lowered = text.lower()
    cache = classify._learn(classify._WordCache(native=False), classify._words(lowered))
    split = classify._words(lowered)
    if any(cache.found[w].folded for w in cache.cues.intersection(split)):
        return None
    counts, markers, first = _python_counts(lowered)
    maths = counts[8]
    if "\\" in text:
        maths += sum(markup in text for markup in classify._LATEX)
    if any(sign in text for sign in "=^*/") and classify._ARITHMETIC.search(text):
        maths += 1
    steps = text.count("?")
    if "\n" in text:
        steps += sum(1 for line in text.splitlines() if classify._STEP.match(line))
    simple = len(text) < 400 and (counts[16] > 0 or first in classify._GREETINGS)
    code = classify._code_markers(text, markers)
    return (maths, counts[1], counts[4], steps, counts[2], int(simple), code)


def _features(text: str) -> tuple[int, ...] | None:
    """``WordScan.features`` of ``text``, its new words looked at first as the
    scorer does."""
    for _ in range(2):
        found = classify._known.scan.features(text)
        if not isinstance(found, list):
            assert found is None or type(found) is tuple
            return found
        classify._learn(classify._known, found)
    raise AssertionError("words looked at are still unseen")


#: ASCII pieces that move what ``features`` reads beyond words: list steps, questions,
#: line breaks of every kind, arithmetic, maths markup, code markers, greetings.
_ASCII_PIECES = st.one_of(
    st.sampled_from([w for w in _WORDS if w.isascii()]),
    st.sampled_from(["hi", "Hello", "thanks", "yes", "no", "OK", "design", "Explain why"]),
    st.sampled_from(["1.", "12)", "3", "-", "*", "•", "?", "=", "<", ">", "^", "/", "\\", "x"]),
    st.sampled_from(["\\frac", "\\int", "\\sum", "\\sqrt", "```", "=>", ";\n", "{\n"]),
    st.sampled_from(["def ", "DEF ", "SELECT ", "select ", "Traceback", "public static"]),
    st.sampled_from([" ", "  ", "\t", "\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d"]),
    st.sampled_from(["\x1e", "\x1f", "\x00", "\x7f", "é"]),
    st.integers(0, 999).map(str),
    st.text(st.characters(max_codepoint=127), max_size=6),
)


@settings(max_examples=600)
@given(st.lists(_ASCII_PIECES, max_size=60).map("".join))
def test_features_reads_a_text_as_the_python_path(text: str) -> None:
    saved = classify._known
    try:
        classify._known = classify._WordCache(native=True)
        expected = _python_features(text)
        assert _features(text) == expected  # every word new
        assert _features(text) == expected  # every word known
    finally:
        classify._known = saved


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", (0, 0, 0, 0, 0, 0, 0)),
        ("hi", (0, 0, 0, 0, 0, 1, 0)),
        ("Hello, can you prove 2^3 = 8?", (2, 1, 0, 1, 0, 1, 0)),
        ("Steps:\n1. design it\n 2) analyze\n- done\n-x\n*  \n", (0, 2, 0, 3, 0, 0, 0)),
        ("a\r\n1. b\x1c2. c\x0b- d", (0, 0, 0, 3, 0, 0, 0)),
        ("one line 1. x - y", (0, 0, 0, 0, 0, 0, 0)),  # steps only in texts of lines
        ("a\n1.\x1fb\n\x1f-\tc\n-\x1f", (0, 0, 0, 2, 0, 0, 0)),  # \x1f: a space
        ("x =\x1f5", (1, 0, 0, 0, 0, 0, 0)),
        ("x <5 *", (1, 0, 0, 0, 0, 0, 0)),  # '<' counts once '*' is in the text
        ("x <5", (0, 0, 0, 0, 0, 0, 0)),
        ("SELECT * FROM t;\nselect", (0, 0, 0, 0, 0, 0, 2)),
        ("\\frac{1}{2} + \\int f", (2, 0, 0, 0, 0, 0, 0)),
        ("tax2020 report", None),  # a cue word holding a digit: the Python path's
        ("résumé", None),  # not ASCII: the Python path's
    ],
)
def test_features_of_some_texts(text: str, expected: tuple[int, ...] | None) -> None:
    saved = classify._known
    try:
        classify._known = classify._WordCache(native=True)
        assert _features(text) == expected
        assert _python_features(text) == expected
    finally:
        classify._known = saved


def test_features_refuses_what_is_not_text() -> None:
    scan = WordScan(classify._FOLD_TABLE, ())
    with pytest.raises(TypeError, match="str"):
        scan.features(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tuples of bytes"):
        WordScan(classify._FOLD_TABLE, (), markers=("def ",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="32 markers"):
        WordScan(classify._FOLD_TABLE, (), markers=tuple(b"m" for _ in range(33)))
