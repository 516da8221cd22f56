"""The classifier's word pass in C (``routing_middleware/_wordscan.c``) against the
Python path it stands in for; skipped when the extension was not built."""

from __future__ import annotations

import random

import pytest

from routing_middleware import classify

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
    scan = WordScan(classify._FOLD_TABLE, ())
    with pytest.raises(TypeError, match="bytes"):
        scan.scan("text")  # type: ignore[arg-type]
