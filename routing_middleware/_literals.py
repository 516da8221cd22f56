"""Substrings that any match of a regular expression must contain.

Rules test a regex against the last user message of every request. A search with a
leading ``\\b`` or a character class gets no help from the regex engine's own literal
scan and tries the pattern at every position of the text; a plain substring test
for the literals every match must contain rules most texts out far sooner.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from typing import Any

__all__ = ["Prefilter", "prefilter"]

_sre_parse: Any
_c: Any
_REPEATS: tuple[Any, ...] = ()
try:  # the parser the ``re`` module compiles with (private, there since 3.11)
    _sre_parse = importlib.import_module("re._parser")
    _c = importlib.import_module("re._constants")
    _REPEATS = (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT)
except (ImportError, AttributeError):  # pragma: no cover - no such parser: no prefilter
    _sre_parse = _c = None

#: Literals shorter than this rule out too little to be worth a test.
_MIN_LENGTH = 2
#: More alternatives than this and the tests cost more than they save.
_MAX_LITERALS = 16


class Prefilter:
    """``might_match(text)`` is ``False`` only when ``pattern`` cannot match ``text``.

    ``literals`` are the substrings one of which every match contains; with
    ``fold`` they are lowercase ASCII and are looked for in the lowered text, which
    is only sound for ASCII text (Unicode case folding pairs ASCII letters with
    others, such as the Kelvin sign with ``k``), so other text always might match.
    """

    __slots__ = ("fold", "literals")

    def __init__(self, literals: tuple[str, ...], fold: bool) -> None:
        self.literals = literals
        self.fold = fold

    def might_match(self, text: str) -> bool:
        if self.fold:
            if not text.isascii():
                return True
            text = text.lower()
        for literal in self.literals:  # noqa: SIM110 (``in`` itself: no call per literal)
            if literal in text:
                return True
        return False


def prefilter(pattern: re.Pattern[str]) -> Prefilter | None:
    """A :class:`Prefilter` for ``pattern``, or ``None`` when no useful set of
    literals is certain (a match could be empty, or made of classes only)."""
    if _sre_parse is None or not isinstance(pattern.pattern, str):
        return None
    try:
        parsed = _sre_parse.parse(pattern.pattern, pattern.flags)
    except Exception:  # the parser is private: never let it break a rule
        return None
    fold = bool(parsed.state.flags & re.IGNORECASE)
    try:
        found = _necessary(parsed.data)
    except _Unsupported:
        return None
    if found is None or len(found) > _MAX_LITERALS:
        return None
    if fold:
        if not all(s.isascii() for s in found):
            return None
        found = frozenset(s.lower() for s in found)
    return Prefilter(tuple(sorted(found)), fold)


class _Unsupported(Exception):
    """A construct the analysis does not follow (scoped flags)."""


def _better(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    """The more selective of two literal sets: longer shortest literal, then fewer."""
    if a is None:
        return b
    if b is None:
        return a
    key_a = (min(map(len, a)), -len(a))
    key_b = (min(map(len, b)), -len(b))
    return b if key_b > key_a else a


def _useful(found: Iterable[str]) -> frozenset[str] | None:
    found = frozenset(found)
    if not found or min(map(len, found)) < _MIN_LENGTH or len(found) > _MAX_LITERALS:
        return None
    return found


def _leading(items: Any) -> str:
    """The literal characters a sequence starts with (zero-width assertions skipped)."""
    out = []
    for op, av in items:
        if op is _c.LITERAL:
            out.append(chr(av))
        elif op is not _c.AT:
            break
    return "".join(out)


def _necessary(items: Any) -> frozenset[str] | None:
    """A set of strings one of which every match of the sequence ``items`` contains."""
    best: frozenset[str] | None = None
    run: list[str] = []
    for op, av in items:
        if op is _c.LITERAL:
            run.append(chr(av))
            continue
        if op is _c.AT or op is _c.ASSERT or op is _c.ASSERT_NOT:
            continue  # zero-width: the literals either side stay adjacent
        prefix = "".join(run)
        if prefix:
            best = _better(best, _useful([prefix]))
        run = []
        if op is _c.SUBPATTERN:
            _group, add_flags, del_flags, sub = av
            if add_flags or del_flags:
                raise _Unsupported
            best = _better(best, _necessary(sub.data))
        elif op is _c.BRANCH:
            branches = av[1]
            union: set[str] = set()
            for branch in branches:
                inner = _necessary(branch.data)
                if inner is None:
                    union.clear()
                    break
                union |= inner
            best = _better(best, _useful(union))
            # ``ab(?:cd|ef)`` → "abcd" or "abef": the run joined to each branch's start.
            if prefix:
                heads = [_leading(branch.data) for branch in branches]
                if all(heads):
                    best = _better(best, _useful(prefix + h for h in heads))
        elif op in _REPEATS:
            low, _high, sub = av
            if low >= 1:
                best = _better(best, _necessary(sub.data))
        elif op is _c.ATOMIC_GROUP:
            best = _better(best, _necessary(av.data))
    if run:
        best = _better(best, _useful(["".join(run)]))
    return best
