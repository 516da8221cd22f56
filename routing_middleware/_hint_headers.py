"""Reading the routing hint headers (``X-LLMRoute-*``) a gateway caller may send.

One reading for the Starlette gateway and the Django views, so both take and
refuse the same values. Values come as ``str`` (header bytes decoded as
latin-1, as WSGI and ASGI servers hand them over) and are read as the UTF-8 they
were sent in (see :func:`text_hint`); a value that cannot be used raises
:class:`~routing_middleware.schema.InvalidRequest` naming the header, which the
gateways answer as a 400 in the caller's dialect.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from .schema import InvalidRequest

__all__ = [
    "MAX_FEATURE_LENGTH",
    "MAX_HINT_LENGTH",
    "feature_hint",
    "latency_hint",
    "mode_hint",
    "quality_hint",
    "tags_hint",
    "text_hint",
    "tier_hint",
]

#: The longest hint header value taken.
MAX_HINT_LENGTH = 200
#: The longest feature taken: what usage records store of one (the Django sink's
#: column). A feature is an attribution key, so one that would be stored cut short
#: is refused rather than merged with others under its first characters.
MAX_FEATURE_LENGTH = 128

FEATURE_HEADER = "X-LLMRoute-Feature"

TIER_HEADER = "X-LLMRoute-Tier"
LATENCY_HEADER = "X-LLMRoute-Max-Latency-Ms"
QUALITY_HEADER = "X-LLMRoute-Min-Quality"
TAGS_HEADER = "X-LLMRoute-Tags"
MODE_HEADER = "X-LLMRoute-Mode"
_MODES = ("enforce", "observe")


def _utf8(value: str, header: str) -> str:
    """The text of header bytes handed over decoded as latin-1, read as UTF-8.

    Clients send non-ASCII text (``résumé``) as UTF-8; read as latin-1 it would be
    stored garbled (``rÃ©sumÃ©``). Bytes that are not UTF-8 are refused, not guessed
    at. A value with characters beyond latin-1 was never header bytes: taken as is.
    """
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        return value
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(
            f"Invalid {header} header: expected text in UTF-8.", param=header
        ) from None


def text_hint(value: str, header: str, limit: int = MAX_HINT_LENGTH) -> str:
    """``value`` (as UTF-8) stripped, when it is 1 to ``limit`` printable characters."""
    text = _utf8(value, header).strip()
    if not text or len(text) > limit or not text.isprintable():
        raise InvalidRequest(
            f"Invalid {header} header: expected 1 to {limit} printable characters.",
            param=header,
        )
    return text


def feature_hint(value: str) -> str:
    """A feature: 1 to :data:`MAX_FEATURE_LENGTH` printable characters, stripped."""
    return text_hint(value, FEATURE_HEADER, MAX_FEATURE_LENGTH)


def tier_hint(value: str, tier_names: Iterable[str]) -> int | str:
    """A tier level (1 or more), or one of ``tier_names`` in any case (as the router
    reads names); anything else, a superscript digit or ``--2`` included, is refused."""
    text = text_hint(value, TIER_HEADER)
    # Only ASCII digits and one sign: int() would also read "²"-like digits and "--2"
    # is no number at all.
    if text.isascii() and text.removeprefix("-").isdigit():
        level = int(text)
        if level < 1:
            raise InvalidRequest(
                f"Invalid {TIER_HEADER} header: a tier level is 1 or more, not {level}.",
                param=TIER_HEADER,
            )
        return level
    names = sorted(tier_names)
    if text.lower() in {name.lower() for name in names}:
        return text
    raise InvalidRequest(
        f"Invalid {TIER_HEADER} header: {text!r} is neither a tier level (1 or more) nor "
        f"a tier name ({', '.join(names)}).",
        param=TIER_HEADER,
    )


def latency_hint(value: str) -> float:
    """A latency limit in milliseconds: a finite number above 0, in ASCII."""
    text = text_hint(value, LATENCY_HEADER)
    try:
        # ASCII only: float() would also read other scripts' digits and "1_000".
        limit = float(text) if text.isascii() and "_" not in text else math.nan
    except ValueError:
        limit = math.nan
    if not (math.isfinite(limit) and limit > 0):  # NaN, infinities, 0 and below
        raise InvalidRequest(
            f"Invalid {LATENCY_HEADER} header: expected a number of milliseconds above 0.",
            param=LATENCY_HEADER,
        )
    return limit


def quality_hint(value: str) -> int:
    """A minimum quality score: a whole number of 0 or more, in ASCII digits."""
    text = text_hint(value, QUALITY_HEADER)
    if not (text.isascii() and text.isdigit()):
        raise InvalidRequest(
            f"Invalid {QUALITY_HEADER} header: expected a whole number of 0 or more.",
            param=QUALITY_HEADER,
        )
    return int(text)


def tags_hint(value: str) -> frozenset[str]:
    """The comma-separated tags of ``value`` (empty ones dropped)."""
    text = text_hint(value, TAGS_HEADER)
    return frozenset(tag.strip() for tag in text.split(",") if tag.strip())


def mode_hint(value: str) -> str:
    """``enforce`` or ``observe``."""
    text = text_hint(value, MODE_HEADER)
    if text not in _MODES:
        raise InvalidRequest(
            f"Invalid {MODE_HEADER} header: expected {' or '.join(_MODES)}.", param=MODE_HEADER
        )
    return text
