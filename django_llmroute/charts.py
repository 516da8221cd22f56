"""Bar charts as inline SVG, drawn on the server: no JavaScript, no CDN, works offline.

Every chart has a ``<title>`` and ``<desc>`` for screen readers (``role="img"``),
every bar a ``<title>`` tooltip, and the pages print the same numbers as a table
under each chart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from itertools import count

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

__all__ = ["Bar", "column_chart", "horizontal_bar_chart"]

_ids = count(1)
_PALETTE = ("#417690", "#79aec8", "#5b8c5a", "#c9a227", "#b55d4c", "#7a5c99")


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar: its label, its value and the text of its tooltip."""

    label: str
    value: Decimal | int | float
    tooltip: str


def _ratio(value: Decimal | int | float, top: Decimal | int | float) -> float:
    if not top or value <= 0:
        return 0.0
    return float(Decimal(str(value)) / Decimal(str(top)))


def _clip(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"


def _frame(title: str, description: str, width: int, height: int, body: list[str]) -> SafeString:
    n = next(_ids)
    return mark_safe(  # every piece of text below went through escape()
        f'<svg class="llmroute-chart" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'aria-labelledby="llmroute-chart-{n}-t llmroute-chart-{n}-d">'
        f'<title id="llmroute-chart-{n}-t">{escape(title)}</title>'
        f'<desc id="llmroute-chart-{n}-d">{escape(description)}</desc>' + "".join(body) + "</svg>"
    )


def horizontal_bar_chart(
    bars: Sequence[Bar],
    *,
    title: str,
    value_text: Callable[[Decimal | int | float], str] = str,
    width: int = 640,
    bar_height: int = 22,
) -> SafeString:
    """Labelled horizontal bars, longest for the largest value."""
    label_width, value_width, gap = 180, 90, 6
    track = width - label_width - value_width - 2 * gap
    height = max(len(bars), 1) * (bar_height + gap) + gap
    top = max((b.value for b in bars), default=0)
    body: list[str] = []
    if not bars:
        body.append(f'<text x="{gap}" y="{bar_height}" class="llmroute-empty">No data</text>')
    for i, bar in enumerate(bars):
        y = gap + i * (bar_height + gap)
        length = round(track * _ratio(bar.value, top), 1)
        colour = _PALETTE[i % len(_PALETTE)]
        body.append(
            f'<g class="llmroute-bar"><text x="{label_width - gap}" y="{y + bar_height * 0.7:.1f}"'
            f' text-anchor="end">{escape(_clip(bar.label, 26))}</text>'
            f'<rect x="{label_width}" y="{y}" width="{length}" height="{bar_height}"'
            f' fill="{colour}"><title>{escape(bar.tooltip)}</title></rect>'
            f'<text x="{label_width + length + gap}" y="{y + bar_height * 0.7:.1f}">'
            f"{escape(value_text(bar.value))}</text></g>"
        )
    summary = "; ".join(f"{b.label}: {value_text(b.value)}" for b in bars[:12])
    return _frame(title, summary or "No data", width, height, body)


def column_chart(
    bars: Sequence[Bar],
    *,
    title: str,
    value_text: Callable[[Decimal | int | float], str] = str,
    width: int = 640,
    height: int = 200,
) -> SafeString:
    """Vertical columns in order (e.g. one per day), labels under the first and last."""
    axis = 18
    plot = height - axis - 4
    n = max(len(bars), 1)
    step = width / n
    column = max(step * 0.8, 1.0)
    top = max((b.value for b in bars), default=0)
    body = [f'<line x1="0" y1="{plot}" x2="{width}" y2="{plot}" stroke="#999"/>']
    if not bars:
        body.append(f'<text x="4" y="{plot / 2:.0f}" class="llmroute-empty">No data</text>')
    for i, bar in enumerate(bars):
        h = round(plot * _ratio(bar.value, top), 1)
        x = round(i * step + (step - column) / 2, 1)
        body.append(
            f'<rect class="llmroute-bar" x="{x}" y="{plot - h}" width="{column:.1f}" '
            f'height="{h}" fill="{_PALETTE[0]}"><title>{escape(bar.tooltip)}</title></rect>'
        )
    if bars:
        body.append(f'<text x="0" y="{height - 4}">{escape(bars[0].label)}</text>')
        if len(bars) > 1:
            body.append(
                f'<text x="{width}" y="{height - 4}" text-anchor="end">'
                f"{escape(bars[-1].label)}</text>"
            )
    summary = f"{len(bars)} bars, highest {value_text(top)}" if bars else "No data"
    return _frame(title, summary, width, height, body)
