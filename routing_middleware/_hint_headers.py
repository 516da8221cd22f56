"""Reading the routing hint headers (``X-LLMRoute-*``) a gateway caller may send.

One reading for the Starlette gateway and the Django views, so both take and
refuse the same values. Values come as ``str`` (header bytes decoded as
latin-1, as WSGI does); a value that cannot be used raises
:class:`~routing_middleware.schema.InvalidRequest` naming the header, which the
gateways answer as a 400 in the caller's dialect.
"""

from __future__ import annotations

from collections.abc import Iterable

from .schema import InvalidRequest

__all__ = ["MAX_HINT_LENGTH", "text_hint", "tier_hint"]

#: The longest hint header value taken.
MAX_HINT_LENGTH = 200

TIER_HEADER = "X-LLMRoute-Tier"


def text_hint(value: str, header: str) -> str:
    """``value`` stripped, when it is 1 to :data:`MAX_HINT_LENGTH` printable characters."""
    text = value.strip()
    if not text or len(text) > MAX_HINT_LENGTH or not text.isprintable():
        raise InvalidRequest(
            f"Invalid {header} header: expected 1 to {MAX_HINT_LENGTH} printable characters.",
            param=header,
        )
    return text


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
