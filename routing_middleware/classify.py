"""Request classifiers: which tier does a request need?

A classifier is any callable ``(ChatRequest) -> int | None`` returning a tier (1
cheap, 2 balanced, 3 premium) or ``None`` for "no opinion". Three ship:

- :class:`ComplexityScorer`: built in, offline, a few microseconds. Hand-weighted
  features (length, code, math, multi-step and reasoning cues, legal / medical /
  financial vocabulary, turns, tools) give a score in [0, 1]; thresholds turn it
  into a tier.
- :class:`LLMJudgeClassifier`: asks a model (any injected ``ask(prompt) -> str``
  function) and caches answers by prompt hash.
- :class:`EmbeddingKNNClassifier`: cosine k-nearest-neighbours over labelled
  examples with an injected ``embed(text) -> vector`` function, in pure Python.
"""

from __future__ import annotations

import hashlib
import math
import operator
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cachetools import TTLCache

from . import tokens
from ._native import native as _native
from .schema import ChatRequest, Message

#: The word pass in C (``_wordscan.c``), or ``None`` for the Python path.
_WordScan: Any = _native("_wordscan", "WordScan")

__all__ = [
    "Classifier",
    "ComplexityScorer",
    "EmbeddingKNNClassifier",
    "Features",
    "LLMJudgeClassifier",
    "prompt_text",
]

Classifier = Callable[[ChatRequest], "int | None"]

# Word categories, matched against single lowercased words (results cached per word);
# multi-word cues are plain substring checks. Both keep scoring in the microseconds.
_REASONING, _TASK, _DOMAIN, _MATH, _SIMPLE = 1, 2, 4, 8, 16
_WORD_CLASSES = (
    (
        _REASONING,
        re.compile(
            r"analy[sz]\w*|evaluat\w+|assess\w*|design\w*|architect\w*|debug\w*|deriv\w+|"
            r"justif\w+|critique|implications?|strateg\w+|plan|deadlock|scal(?:e|ing|ability)|"
            r"migrat\w+|recommend\w*|consisten\w+|concurren\w+|distributed|refactor\w*|"
            r"optimi[sz]\w+|diagnos\w+|hypothes[ie]s|correctness|guarantee\w*|prove|proof|"
            r"risks?|bias\w*|sensitivity|formal\w*|invariants?|partition\w*|latency|"
            r"exactly-once|lock-free|complexity|sequential|statistic\w*|trade-?offs?"
        ),
    ),
    (
        _TASK,
        re.compile(
            r"write|explain|draft|create|describe|implement|build|compare|discuss|propose|"
            r"outline|sketch|verify|solve|enumerate|prioriti[sz]e|review|develop|identify|"
            r"estimate|model|suggest|summari[sz]e|rewrite|structure|generali[sz]e"
        ),
    ),
    (
        _DOMAIN,
        re.compile(
            r"contract\w*|liabilit\w+|indemnif\w+|jurisdiction|statute|clause|litigation|"
            r"gdpr|hipaa|compliance|regulat\w+|diagnos\w+|symptoms?|dosage|contraindicat\w+|"
            r"clinical|patient|medication|prognosis|valuation|portfolio|hedg\w+|derivatives?|"
            r"tax\w*|amorti[sz]\w+|ebitda|dcf|securities|audit\w*|fiduciary|arbitration|"
            r"tort|pharmacokinetic\w*"
        ),
    ),
    (
        _MATH,
        re.compile(
            r"integral|derivative|eigen\w*|theorem|lemma|prove|proof|probability|matrix|"
            r"polynomial|converge\w*|differential|induction|asymptotic\w*|big-o|variance"
        ),
    ),
    (
        _SIMPLE,
        re.compile(
            r"translate|spell|capitali[sz]e|rephrase|tl;?dr|synonym|define|convert|extract|"
            r"classify|sentiment|uppercase|lowercase"
        ),
    ),
)
_PHRASES = (
    (
        _REASONING,
        (
            "step by step",
            "step-by-step",
            "explain why",
            "reason about",
            "root cause",
            "compare and contrast",
            "pros and cons",
            "edge case",
            "race condition",
            "threat model",
            "memory ordering",
        ),
    ),
    (_TASK, ("walk through", "lay out", "give feedback", "how do i", "what are")),
    (_DOMAIN, ("discounted cash flow",)),
    (
        _MATH,
        (
            "complexity of",
            "optimization problem",
            "expected value",
        ),
    ),
    (
        _SIMPLE,
        (
            "fix the typo",
            "fix typo",
            "fix the grammar",
            "one word",
            "one sentence",
            "in a sentence",
            "what time",
            "what is the capital",
            "format this",
            "format as",
            "list of",
            "yes or no",
        ),
    ),
)
_GREETINGS = frozenset({b"hi", b"hello", b"hey", b"thanks", b"thank", b"ok", b"yes", b"no"})
_CODE_MARKERS = (
    "```",
    "def ",
    "class ",
    "function",
    "=>",
    "import ",
    "#include",
    "public static",
    "const ",
    "Traceback",
    ";\n",
    "{\n",
    "SELECT ",
)
_LATEX = ("\\frac", "\\int", "\\sum", "\\sqrt")
# Punctuation becomes spaces so ``bytes.split`` yields words (hyphens and '+#' stay).
_PUNCTUATION = b'.,;:!?()[]{}"`*/=<>|\\~@$%&_'
_SPLIT_TABLE = bytes.maketrans(_PUNCTUATION, b" " * len(_PUNCTUATION))
# Digits are also folded to '0': numbers are most of the words a text brings that
# were never met before, and folded they are met again. No cue holds a digit and
# ``\\w`` takes any, so folding changes no word's cue; only words differing in digits
# alone become one, which :func:`_cues` undoes for the few that are cues.
_FOLD_DIGITS = bytes.maketrans(b"123456789", b"0" * 9)
_FOLD_TABLE = _SPLIT_TABLE.translate(_FOLD_DIGITS)
_ARITHMETIC = re.compile(r"[=<>^]\s*\d|\d\s*[\^*/]\s*\d")
_STEP = re.compile(r"\s*(?:\d+[.)]|[-*•])\s+\S")


def _phrase_heads() -> dict[bytes, tuple[tuple[int, str], ...]]:
    heads: dict[bytes, list[tuple[int, str]]] = {}
    for flag, phrases in _PHRASES:
        for phrase in phrases:
            heads.setdefault(phrase.split()[0].encode(), []).append((flag, phrase))
    return {k: tuple(v) for k, v in heads.items()}


#: Multi-word cues by their first word: a phrase is looked for only when its first
#: word occurs in the text.
_PHRASE_HEADS = _phrase_heads()

# Code markers are looked for only where a text's words point to them, instead of
# scanning every text once per marker. A marker made of word characters leaves a
# trace on the words of the lowered text: "def " in the text means a word ending in
# "def", "function" a word holding "function". One holding a separator is looked
# for when the text has that separator.
_MARKER_WORD_ENDS = (
    ("def", "def "),
    ("class", "class "),
    ("import", "import "),
    ("const", "const "),
    ("select", "SELECT "),
    ("public", "public static"),
)
_MARKER_WORD_PARTS = (
    ("function", "function"),
    ("traceback", "Traceback"),
    ("#include", "#include"),
)
_MARKER_SEPARATORS = (("`", "```"), ("=", "=>"), (";", ";\n"), ("{", "{\n"))
_MARKER_ENDINGS = tuple(end for end, _ in _MARKER_WORD_ENDS)

#: The class flags set in each combination of them.
_FLAG_BITS = tuple(
    tuple(flag for flag in (_REASONING, _TASK, _DOMAIN, _MATH, _SIMPLE) if flags & flag)
    for flags in range(32)
)
#: Matches a word in at least one class: most words are in none, and one match
#: then settles them instead of one per class.
_ANY_CLASS = re.compile("|".join(f"(?:{pattern.pattern})" for _, pattern in _WORD_CLASSES))


#: Every phrase, and every code marker, by its bit in what :class:`_WordScan` keeps.
_PHRASE_LIST = tuple((flag, phrase) for flag, phrases in _PHRASES for phrase in phrases)
_PHRASE_BIT = {entry: 1 << bit for bit, entry in enumerate(_PHRASE_LIST)}
_MARKER_BIT = {marker: 1 << bit for bit, marker in enumerate(_CODE_MARKERS)}
#: The markers :func:`_code_markers` looks for when the text holds their separator,
#: which is their first character: the C pass looks for them always, the same thing.
_SEPARATOR_MARKERS = sum(_MARKER_BIT[marker] for _, marker in _MARKER_SEPARATORS)
assert all(marker.startswith(separator) for separator, marker in _MARKER_SEPARATORS)
#: The C pass's flag, beside the classes', of a greeting word.
_GREETING = 32


class _Cue:
    """What a word brings to a text: the classes it is in (``flags``, and as bits
    ``mask``), the phrases it starts and the code markers it may be part of.
    ``folded``: a word in a class holding a folded digit, which may stand for
    several words of the text."""

    __slots__ = ("flags", "folded", "markers", "mask", "phrases")

    def __init__(
        self,
        mask: int,
        phrases: tuple[tuple[int, str], ...],
        markers: tuple[str, ...],
        folded: bool,
    ) -> None:
        self.mask = mask
        self.flags = _FLAG_BITS[mask]
        self.phrases = phrases
        self.markers = markers
        self.folded = folded


def _cue_of(word: bytes) -> _Cue | None:
    """The cue ``word`` is, or ``None`` for a word that adds nothing."""
    text = word.decode("utf-8", "replace")
    flags = 0
    if _ANY_CLASS.fullmatch(text):
        for flag, pattern in _WORD_CLASSES:
            if pattern.fullmatch(text):
                flags |= flag
    markers = [marker for part, marker in _MARKER_WORD_PARTS if part in text]
    if text.endswith(_MARKER_ENDINGS):
        markers += [marker for end, marker in _MARKER_WORD_ENDS if text.endswith(end)]
    phrases = _PHRASE_HEADS.get(word, ())
    if not (flags or markers or phrases):
        return None
    return _Cue(flags, phrases, tuple(markers), bool(flags) and b"0" in word)


class _WordCache:
    """What every (folded) word met so far brings to a text.

    ``seen`` holds each word once looked at; ``cues`` only the words that bring
    something, and ``found`` what they bring. Set operations in C then find a text's
    new words and its cue words without a Python loop over every word. A full cache
    is replaced, never cleared in place, so a thread holding one sees it consistent.
    """

    __slots__ = ("cues", "found", "scan", "seen")

    def __init__(self, native: bool | None = None) -> None:
        self.seen: set[bytes] = set()
        self.cues: set[bytes] = set()
        self.found: dict[bytes, _Cue] = {}
        #: The same words in C, when the extension is built (``native`` by default):
        #: a text's pass over them makes no Python object per word.
        self.scan: Any = None
        if _WordScan is not None and native is not False:
            phrases = tuple((flag, phrase.encode()) for flag, phrase in _PHRASE_LIST)
            self.scan = _WordScan(
                _FOLD_TABLE,
                phrases,
                markers=tuple(marker.encode() for marker in _CODE_MARKERS),
                always=_SEPARATOR_MARKERS,
                latex=tuple(markup.encode() for markup in _LATEX),
            )


_MAX_WORDS = 50_000
_known = _WordCache()


def _learn(cache: _WordCache, split: list[bytes]) -> _WordCache:
    """A word cache with every word of ``split`` looked at: ``cache`` with the words
    new to it added, or a fresh one when ``cache`` would outgrow its bound."""
    global _known
    words = set(split)
    new = words.difference(cache.seen)
    if len(cache.seen) + len(new) > _MAX_WORDS:
        cache, new = _WordCache(native=cache.scan is not None), words
        _known = cache
    scan = cache.scan
    for word in new:
        cue = _cue_of(word)
        if cue is not None:
            cache.found[word] = cue
            cache.cues.add(word)
        if scan is not None:
            greeting = _GREETING if word in _GREETINGS else 0
            if cue is None:
                scan.add(word, greeting, 0, 0, False)
            else:
                phrases = sum(_PHRASE_BIT[entry] for entry in cue.phrases)
                markers = sum(_MARKER_BIT[marker] for marker in cue.markers)
                scan.add(word, cue.mask | greeting, phrases, markers, cue.folded)
        cache.seen.add(word)  # last: a word in ``seen`` always has its cue recorded
    return cache


def _words(lowered: str) -> list[bytes]:
    """The words of ``lowered``, digits folded to '0'."""
    return lowered.encode("utf-8", "replace").translate(_FOLD_TABLE).split()


def _cues(split: list[bytes], lowered: str) -> list[_Cue]:
    """The cues among the words ``split`` of ``lowered``, one per distinct word."""
    cache = _known
    # Membership tests against the cache, in C, with no set of the text's words built:
    # with digits folded, texts never seen mostly bring no word not looked at yet.
    if not cache.seen.issuperset(split):
        cache = _learn(cache, split)
    found = cache.found
    cues = [found[word] for word in cache.cues.intersection(split)]
    for cue in cues:
        if cue.folded:
            return _unfolded(lowered, cues)
    return cues


def _unfolded(lowered: str, cues: list[_Cue]) -> list[_Cue]:
    """``cues`` with a folded cue once per distinct word of ``lowered`` it stands for."""
    unfolded = [cue for cue in cues if not cue.folded]
    for word in set(lowered.encode("utf-8", "replace").translate(_SPLIT_TABLE).split()):
        cue = _cue_of(word.translate(_FOLD_DIGITS))
        if cue is not None and cue.folded:
            unfolded.append(cue)
    return unfolded


def _cue_counts(lowered: str, cues: list[_Cue]) -> list[int]:
    """Distinct cue words and phrases per class in the ``lowered`` text holding
    ``cues``, indexed by flag bit."""
    counts = [0] * 17
    for cue in cues:
        for flag in cue.flags:
            counts[flag] += 1
        for flag, phrase in cue.phrases:
            if phrase in lowered:
                counts[flag] += 1
    return counts


def _text_cues(lowered: str) -> tuple[list[int], frozenset[str], bytes | None]:
    """What the words of the ``lowered`` text bring: distinct cue words and phrases
    per class (indexed by flag bit), the code markers its words may be part of, and
    its first (folded) word. In C when the extension is built, but for texts with a
    cue word holding a digit, which the Python path unfolds."""
    cache = _known
    scan = cache.scan
    if scan is not None:
        encoded = lowered.encode("utf-8", "replace")
        for _ in range(3):  # (new words are looked at; a full cache starts over)
            counts, bits, folded, first = scan.scan(encoded)
            if counts is not None:
                if not folded:
                    return counts, _markers_of(bits) if bits else _NO_MARKERS, first
                break
            cache = _learn(cache, bits)  # (the words not looked at yet)
            scan = cache.scan
            if scan is None:
                break
    split = _words(lowered)
    found = _cues(split, lowered)
    markers = frozenset(marker for cue in found for marker in cue.markers)
    return _cue_counts(lowered, found), markers, split[0] if split else None


_NO_MARKERS: frozenset[str] = frozenset()
_markers_by_bits: dict[int, frozenset[str]] = {}


def _markers_of(bits: int) -> frozenset[str]:
    """The code markers of a set of :data:`_MARKER_BIT` bits (at most 2**13 sets)."""
    found = _markers_by_bits.get(bits)
    if found is None:
        found = frozenset(marker for marker, bit in _MARKER_BIT.items() if bits & bit)
        _markers_by_bits[bits] = found
    return found


def _code_markers(text: str, markers: frozenset[str]) -> int:
    """How many of :data:`_CODE_MARKERS` ``text`` contains, its words pointing to
    ``markers``."""
    candidates = set(markers)
    for separator, marker in _MARKER_SEPARATORS:
        if separator in text:
            candidates.add(marker)
    return sum(map(text.__contains__, candidates)) if candidates else 0


# Reasoning and domain cue counts of system prompts. Apps send a handful of fixed
# system prompts again and again, so they are scored once; the cache is bounded and
# starts over when full (a prompt templated per user just keeps missing it).
_MAX_SYSTEM_PROMPTS = 256
_system_cues: dict[str, tuple[int, int]] = {}


def _system_counts(system: str) -> tuple[int, int]:
    found = _system_cues.get(system)
    if found is None:
        counts = _text_cues(system.lower())[0]
        found = (counts[_REASONING], counts[_DOMAIN])
        if len(_system_cues) >= _MAX_SYSTEM_PROMPTS:
            _system_cues.clear()
        _system_cues[system] = found
    return found


def _with_system(reasoning: int, domain: int, system: str) -> tuple[int, int]:
    """Reasoning and domain cue counts, each raised to the system prompt's."""
    if system:
        in_system = _system_cues.get(system) or _system_counts(system)
        if reasoning < in_system[0]:
            reasoning = in_system[0]
        if domain < in_system[1]:
            domain = in_system[1]
    return reasoning, domain


def prompt_text(request: ChatRequest) -> str:
    """The text a classifier looks at: system instructions and the last user turn."""
    system = request.system_text
    last = request.last_user_text
    return f"{system}\n\n{last}" if system else last


@dataclass(frozen=True, slots=True)
class Features:
    """Signals the built-in scorer extracts from a request, each in [0, 1]."""

    length: float
    code: float
    math: float
    reasoning: float
    domain: float
    structure: float
    tasks: float
    turns: float
    tools: float
    simple: float


_LOG_SPAN = math.log10(50)
#: The length feature by number of characters (at most 4,000 are read): log-scaled,
#: ~40 chars → 0, ~2,000 chars → 1.
_LENGTH = tuple(
    min(1.0, math.log10(chars / 40) / _LOG_SPAN) if chars > 40 else 0.0 for chars in range(4001)
)
# Counts below the one that saturates a feature, divided as the feature divides them.
_HALVES = (0 / 2, 1 / 2)
_THIRDS = (0 / 3, 1 / 3, 2 / 3)
_QUARTERS = (0 / 4, 1 / 4, 2 / 4, 3 / 4)
_SIXTHS = (0 / 6, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6)
#: Texts whose tier a :class:`ComplexityScorer` remembers.
_MAX_TIERS = 1024
_CODE, _MATH_VALUE = Features.__slots__.index("code"), Features.__slots__.index("math")


def request_texts(request: ChatRequest) -> tuple[str, str, int]:
    """What the built-in scorer reads of ``request`` but its tools: ``last_user_text``,
    ``system_text`` and the number of turns, in one pass (see
    :meth:`ComplexityScorer.tier_of_texts`)."""
    scan = tokens.scan_messages  # (the native pass the token estimate uses too)
    if scan is not None:
        found = scan(request.messages)
        if found is not None:
            return found[1], found[2], found[3]
    return python_texts(request)


def python_texts(request: ChatRequest) -> tuple[str, str, int]:
    """:func:`request_texts` read in Python: what a caller whose native scan gave
    ``None`` asks (it would only give ``None`` again)."""
    messages = request.messages
    last: Message | None = None
    system: list[Message] = []
    users = 0
    for message in messages:
        role = message.role
        if role == "user":
            users += 1
            last = message
        elif role == "system" or role == "developer":
            system.append(message)
    text = "" if last is None else last.text
    if not system:
        instructions = ""
    elif len(system) == 1:
        instructions = system[0].text
    else:
        instructions = "\n\n".join(m.text for m in system)
    return text, instructions, len(messages) if len(messages) == 1 else users


def _vector(request: ChatRequest) -> tuple[float, ...]:
    """Feature values in :class:`Features` field order."""
    text, system, turns = request_texts(request)
    return _vector_of(text, system, turns, len(request.tools) if request.tools else 0)


def _vector_of(text: str, system: str, turns: int, tools: int) -> tuple[float, ...]:
    """:func:`_vector` of a request with these texts, turns and number of tools."""
    text = text[-4000:]
    values, markers, math_hits = _most_features(text, system[-4000:], turns, tools)
    return _all_features(values, text, markers, math_hits)


def _counts(text: str, system: str) -> tuple[int, int, int, int, int, bool, frozenset[str]]:
    """What the features of a request with these texts (already cut to what is read)
    are made of, but for the costlier rest (code markers, maths signs): math cue
    words, reasoning and domain cues (the system prompt's included), list steps and
    questions, task cues, whether it is a simple request, and the code markers its
    words point to."""
    chars = len(text)
    cues, markers, first = _text_cues(text.lower())
    reasoning, domain = _with_system(cues[_REASONING], cues[_DOMAIN], system)
    simple = chars < 400 and (cues[_SIMPLE] > 0 or first in _GREETINGS)
    steps = text.count("?")
    if "\n" in text:
        steps += sum(1 for line in text.splitlines() if _STEP.match(line))
    return cues[_MATH], reasoning, domain, steps, cues[_TASK], simple, markers


def _most_features(
    text: str, system: str, turns: int, tools: int
) -> tuple[list[float], frozenset[str], int]:
    """The feature values of a request with these texts (already cut to what is
    read), turns and number of tools, but for the costlier rest: ``code`` left at 0
    and ``math`` counting cue words only. Also the code markers the text's words
    point to and its math cue words, which :func:`_all_features` takes to finish them."""
    math_hits, reasoning, domain, steps, tasks, simple, markers = _counts(text, system)
    return (
        _values(len(text), math_hits, reasoning, domain, steps, tasks, turns, tools, simple),
        (markers),
        math_hits,
    )


def _values(
    chars: int,
    math_hits: int,
    reasoning: int,
    domain: int,
    steps: int,
    tasks: int,
    turns: int,
    tools: int,
    simple: bool,
) -> list[float]:
    """The feature values these counts make, ``code`` at 0 (see :func:`_most_features`)."""
    return [
        _LENGTH[chars],
        0.0,
        _HALVES[math_hits] if math_hits < 2 else 1.0,
        _THIRDS[reasoning] if reasoning < 3 else 1.0,
        _HALVES[domain] if domain < 2 else 1.0,
        _QUARTERS[steps] if steps < 4 else 1.0,
        _QUARTERS[tasks] if tasks < 4 else 1.0,
        _SIXTHS[turns - 1] if 1 < turns < 7 else 0.0 if turns <= 1 else 1.0,
        _QUARTERS[tools] if tools < 4 else 1.0,
        1.0 if simple else 0.0,
    ]


def _all_features(
    values: list[float], text: str, markers: frozenset[str], math_hits: int
) -> tuple[float, ...]:
    """``values`` from :func:`_most_features` with ``code`` and ``math`` finished."""
    code = _code_markers(text, markers)
    if "\\" in text:
        math_hits += sum(map(text.__contains__, _LATEX))
    if ("=" in text or "^" in text or "*" in text or "/" in text) and _ARITHMETIC.search(text):
        math_hits += 1
    values[_CODE] = _HALVES[code] if code < 2 else 1.0
    values[_MATH_VALUE] = _HALVES[math_hits] if math_hits < 2 else 1.0
    return tuple(values)


# The score of a partly computed request is bounded with this much room per unit of
# the weights' total size, far more than rounding in a sum of ten products can move
# it, so a tier settled by the bounds is the tier of the rounded score.
_ROOM = 1e-9


class ComplexityScorer:
    """The built-in classifier: features → score in [0, 1] → tier.

    ``thresholds`` are (low, high): a score below ``low`` is tier 1, below ``high``
    tier 2, otherwise tier 3. Only the last user message and the system prompt are
    read (the last 4,000 characters of each), so the cost stays flat for long chats.
    """

    #: Weight of each feature in the score; ``simple`` lowers it.
    WEIGHTS = {
        "length": 0.25,
        "code": 0.10,
        "math": 0.25,
        "reasoning": 0.35,
        "domain": 0.25,
        "structure": 0.05,
        "tasks": 0.35,
        "turns": 0.08,
        "tools": 0.10,
        "simple": -0.30,
    }

    def __init__(
        self,
        thresholds: tuple[float, float] = (0.1, 0.3),
        weights: dict[str, float] | None = None,
    ) -> None:
        low, high = thresholds
        if not 0 <= low <= high <= 1:
            raise ValueError("thresholds must satisfy 0 <= low <= high <= 1")
        self.thresholds = thresholds
        merged = {**self.WEIGHTS, **(weights or {})}
        unknown = set(merged) - set(Features.__slots__)
        if unknown:
            raise ValueError(f"unknown feature weight(s): {', '.join(sorted(unknown))}")
        self._weights = tuple(merged.get(name, 0.0) for name in Features.__slots__)
        size = sum(map(abs, self._weights))
        #: How far from the score computed the rounded score can be (``None`` when
        #: weights are not finite: every feature is then computed).
        self._room = _ROOM * (1.0 + size) if math.isfinite(size) else None
        self._products = self._weighed()
        self._bounds = self._weighted()
        #: Tiers by everything the score reads: the last 4,000 characters of the last
        #: user text and of the system text, the turns and the number of tools.
        #: Bounded; starts over when full.
        self._tiers: dict[tuple[str, str, int, int], int] = {}

    def features(self, request: ChatRequest) -> Features:
        """The feature values of ``request``."""
        return Features(*_vector(request))

    def score(self, request: ChatRequest) -> float:
        """The complexity of ``request`` in [0, 1]."""
        total = sum(map(operator.mul, self._weights, _vector(request)))
        return 0.0 if total < 0 else 1.0 if total > 1 else total

    def tier_of(self, score: float) -> int:
        low, high = self.thresholds
        return 1 if score < low else 2 if score < high else 3

    def __call__(self, request: ChatRequest) -> int:
        """The tier of ``request``; a text seen recently is not scored again."""
        text, system, turns = request_texts(request)
        return self.tier_of_texts(text, system, turns, len(request.tools) if request.tools else 0)

    def tier_of_texts(self, text: str, system: str, turns: int, tools: int) -> int:
        """The tier of a request with these :func:`request_texts` and number of tools:
        what a caller that has read them already (the router) asks instead of
        :meth:`__call__`."""
        key = (
            text if len(text) <= 4000 else text[-4000:],  # (a slice costs even when whole)
            system if len(system) <= 4000 else system[-4000:],
            turns,
            tools,
        )
        tiers = self._tiers
        found = tiers.get(key)
        if found is None:
            found = self._tier(key[0], key[1], turns, tools)
            if len(tiers) >= _MAX_TIERS:
                tiers.clear()
            tiers[key] = found
        return found

    def _tier(self, text: str, system: str, turns: int, tools: int) -> int:
        """The tier :meth:`score` gives: from the C pass's counts when it reads the
        text, else leaving out the code markers and the math signs when no values
        they can take would change it."""
        chars = len(text)
        scan = _known.scan
        counts: tuple[int, int, int, int, int, int, int] | list[bytes] | None = None
        if scan is not None:
            counts = scan.features(text)
            tries = 1  # (new words are looked at; a full cache starts over)
            while type(counts) is list and tries < 3:
                scan = _learn(_known, counts).scan
                if scan is None:
                    break
                counts = scan.features(text)
                tries += 1
        if type(counts) is tuple:
            math_hits, reasoning, domain, steps, tasks, simple, code = counts
            reasoning, domain = _with_system(reasoning, domain, system)
            # The products ``score`` sums, in its order: the same sum to the last bit.
            length, codes, mathematics, reasons, domains, steps_, tasks_, turns_, tools_, alone = (
                self._products
            )
            total = sum(
                (
                    length[chars],
                    codes[code if code < 2 else 2],
                    mathematics[math_hits if math_hits < 2 else 2],
                    reasons[reasoning if reasoning < 3 else 3],
                    domains[domain if domain < 2 else 2],
                    steps_[steps if steps < 4 else 4],
                    tasks_[tasks if tasks < 4 else 4],
                    turns_[turns if turns < 7 else 7],
                    tools_[tools if tools < 4 else 4],
                    alone[simple],
                )
            )
            return self.tier_of(0.0 if total < 0 else 1.0 if total > 1 else total)
        math_hits, reasoning, domain, steps, tasks, simple, markers = _counts(text, system)
        bounds = self._bounds
        if bounds is not None:
            # The score's bounds from weighted tables: code can still be anything in
            # [0, 1], math anything from its value so far to 1 (see ``_weighted``).
            length, math_low, math_high, reasons, domains, steps_, tasks_, turns_, tools_, alone = (
                bounds
            )
            partial = (
                length[chars]
                + reasons[reasoning if reasoning < 3 else 3]
                + domains[domain if domain < 2 else 2]
                + steps_[steps if steps < 4 else 4]
                + tasks_[tasks if tasks < 4 else 4]
                + turns_[turns if turns < 7 else 7]
                + tools_[tools if tools < 4 else 4]
            )
            if simple:
                partial += alone
            maths = math_hits if math_hits < 2 else 2
            low, high = partial + math_low[maths], partial + math_high[maths]
            tier = self.tier_of(0.0 if low < 0 else 1.0 if low > 1 else low)
            if tier == self.tier_of(0.0 if high < 0 else 1.0 if high > 1 else high):
                return tier
        values = _values(chars, math_hits, reasoning, domain, steps, tasks, turns, tools, simple)
        total = sum(
            map(operator.mul, self._weights, _all_features(values, text, markers, math_hits))
        )
        return self.tier_of(0.0 if total < 0 else 1.0 if total > 1 else total)

    def _weighed(self) -> tuple[tuple[float, ...], ...]:
        """Each feature's weight times every value it can take, by what the value is
        read from: characters, then counts capped where the feature saturates (code
        markers and maths signs at 2, reasoning cues at 3, domain cues at 2, steps,
        tasks and tools at 4, turns at 7), then whether the text is simple."""
        w_length, w_code, w_math, w_reasoning, w_domain, w_steps, w_tasks, w_turns = self._weights[
            :8
        ]
        w_tools, w_simple = self._weights[8:]
        halves = (*_HALVES, 1.0)
        quarters = (*_QUARTERS, 1.0)
        return (
            tuple(w_length * v for v in _LENGTH),
            tuple(w_code * v for v in halves),
            tuple(w_math * v for v in halves),
            tuple(w_reasoning * v for v in (*_THIRDS, 1.0)),
            tuple(w_domain * v for v in halves),
            tuple(w_steps * v for v in quarters),
            tuple(w_tasks * v for v in quarters),
            tuple(w_turns * v for v in (0.0, 0.0, *_SIXTHS[1:], 1.0)),
            tuple(w_tools * v for v in quarters),
            (w_simple * 0.0, w_simple * 1.0),
        )

    def _weighted(self) -> tuple[Any, ...] | None:
        """The weighted values of :meth:`_weighed` the bounds of :meth:`_tier` read,
        and the room they leave; ``None`` when the weights are not finite (every
        feature is then computed). The bounds are sums of the same products as the
        score in another order: the room covers that."""
        room = self._room
        if room is None:
            return None
        length, _, _, reasons, domains, steps, tasks, turns, tools, alone = self._products
        w_code, w_math = self._weights[1:3]
        maths = (*_HALVES, 1.0)
        math_low = tuple(
            w_math * v - room + min(w_code, 0.0) + min(w_math * (1.0 - v), 0.0) for v in maths
        )
        math_high = tuple(
            w_math * v + room + max(w_code, 0.0) + max(w_math * (1.0 - v), 0.0) for v in maths
        )
        return (length, math_low, math_high, reasons, domains, steps, tasks, turns, tools, alone[1])


_JUDGE_PROMPT = (
    "Rate how capable a language model must be to answer the request below well.\n"
    "Answer with one digit: 1 = simple (short facts, reformatting, translation, "
    "extraction), 2 = moderate (ordinary writing, explanations, routine code), "
    "3 = hard (multi-step reasoning, math, complex code, expert legal/medical/financial "
    "judgement).\n\nRequest:\n"
)
_DIGIT = re.compile(r"[1-3]")


class LLMJudgeClassifier:
    """Asks a model which tier a request needs; answers are cached by prompt hash.

    ``ask`` receives the full judge prompt and returns the model's text; the first
    digit 1-3 in it is the tier (anything else: no opinion). Keep ``ask`` fast and
    cheap (a tier-1 model with a tight ``max_tokens``); errors it raises count as
    no opinion and are not cached.
    """

    def __init__(
        self,
        ask: Callable[[str], str],
        *,
        maxsize: int = 10_000,
        ttl_s: float = 3600.0,
        max_chars: int = 4000,
    ) -> None:
        self._ask = ask
        self._cache: TTLCache[str, int | None] = TTLCache(maxsize=maxsize, ttl=ttl_s)
        self._lock = threading.Lock()
        self._max_chars = max_chars

    def prompt(self, request: ChatRequest) -> str:
        """The prompt sent to the judge for ``request``."""
        return _JUDGE_PROMPT + prompt_text(request)[-self._max_chars :]

    def __call__(self, request: ChatRequest) -> int | None:
        prompt = self.prompt(request)
        key = hashlib.sha256(prompt.encode()).hexdigest()
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        try:
            answer = self._ask(prompt)
        except Exception:
            return None
        found = _DIGIT.search(answer or "")
        tier = int(found.group()) if found else None
        with self._lock:
            self._cache[key] = tier
        return tier


def _normalised(vector: Sequence[float]) -> tuple[float, ...]:
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0:
        return tuple(0.0 for _ in vector)
    return tuple(x / norm for x in vector)


class EmbeddingKNNClassifier:
    """Tier by majority of the ``k`` most similar labelled examples (cosine).

    ``embed`` maps text to a vector (any embedding model, injected). Example
    vectors are embedded once, at construction. Ties go to the higher tier, which
    errs toward quality. ``min_similarity`` gives no opinion when even the best
    match is further than that.
    """

    def __init__(
        self,
        examples: Iterable[tuple[str, int]],
        embed: Callable[[str], Sequence[float]],
        *,
        k: int = 5,
        min_similarity: float = -1.0,
    ) -> None:
        if k < 1:
            raise ValueError("k must be at least 1")
        self._embed = embed
        self.k = k
        self.min_similarity = min_similarity
        self._examples = [(_normalised(embed(text)), tier) for text, tier in examples]
        if not self._examples:
            raise ValueError("at least one labelled example is needed")

    def neighbours(self, text: str) -> list[tuple[float, int]]:
        """The ``k`` nearest examples to ``text`` as (similarity, tier), best first."""
        query = _normalised(self._embed(text))
        scored = [
            (sum(a * b for a, b in zip(query, vector, strict=True)), tier)
            for vector, tier in self._examples
        ]
        scored.sort(key=lambda pair: pair[0], reverse=True)
        return scored[: self.k]

    def __call__(self, request: ChatRequest) -> int | None:
        nearest = self.neighbours(prompt_text(request))
        if not nearest or nearest[0][0] < self.min_similarity:
            return None
        votes = Counter(tier for _, tier in nearest)
        best = max(votes.values())
        return max(tier for tier, count in votes.items() if count == best)
