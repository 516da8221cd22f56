"""The support desk's views. They call the official ``openai`` and ``anthropic`` SDKs
exactly as any app would; llmroute intercepts those calls (``INSTRUMENT_HTTPX``),
routes each to the cheapest good-enough model and records its cost.

Routing needs nothing here but the ``@llm_route`` hints. The rest of the
llmroute-specific code is for the demo page: ``with_raw_response`` and
``collect_records()`` read what happened to each call, to show it.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import openai
from anthropic import Anthropic
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, render
from django.template.loader import render_to_string
from django.views.decorators.http import require_POST
from openai import OpenAI

from django_llmroute.decorators import llm_route
from django_llmroute.runtime import collect_records
from routing_middleware.metering import UsageRecord
from routing_middleware.schema import Usage

from .models import Ticket
from .routing import RoutedAnswer

# Module-level clients, as real apps create them. Keys come from the environment;
# offline, llmroute answers with FakeProvider and the SDK only needs some string.
client = OpenAI(api_key=os.environ.get("OPENAI_API_KEY", "offline-demo"))
claude = Anthropic(api_key=os.environ.get("ANTHROPIC_API_KEY", "offline-demo"))

#: What the code asks for. llmroute treats it as a ceiling and picks within the tier.
MODEL = "gpt-5.4"
LEGAL_MODEL = "claude-opus-4-7"

SYSTEM = "You are a support agent for Acme Cloud. Be accurate, brief and friendly."


def _ticket_text(ticket: Ticket) -> str:
    return f"Subject: {ticket.subject}\nFrom: {ticket.customer}\n\n{ticket.body}"


def _openai_usage(usage: Any) -> Usage:
    if usage is None:
        return Usage(input_tokens=0, output_tokens=0, estimated=True)
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) or 0
    return Usage(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        cached_input_tokens=cached,
    )


def _anthropic_usage(usage: Any) -> Usage:
    read = usage.cache_read_input_tokens or 0
    written = usage.cache_creation_input_tokens or 0
    return Usage(
        input_tokens=usage.input_tokens + read + written,
        output_tokens=usage.output_tokens,
        cached_input_tokens=read,
        cache_write_tokens=written,
    )


def _page(
    request: HttpRequest,
    ticket: Ticket,
    *,
    action: str = "",
    answer: RoutedAnswer | None = None,
    error: str = "",
    status: int = 200,
) -> HttpResponse:
    context = {"ticket": ticket, "action": action, "answer": answer, "error": error}
    return render(request, "support/ticket_detail.html", context, status=status)


_View = Callable[..., HttpResponse]


def _shows_llm_errors(action: str) -> Callable[[_View], _View]:
    """Turn an SDK error (a budget's 402, a provider outage) into a message on the page."""

    def decorate(view: _View) -> _View:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, pk: int) -> HttpResponse:
            try:
                return view(request, pk)
            except (openai.APIError, anthropic.APIError) as exc:
                status = getattr(exc, "status_code", None) or 502
                ticket = get_object_or_404(Ticket, pk=pk)
                message = f"The assistant could not answer ({type(exc).__name__}, {status})."
                return _page(request, ticket, action=action, error=message, status=502)

        return wrapper

    return decorate


def ticket_list(request: HttpRequest) -> HttpResponse:
    """Every ticket, newest first."""
    return render(request, "support/ticket_list.html", {"tickets": Ticket.objects.all()})


def ticket_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One ticket and the LLM actions an agent can run on it."""
    return _page(request, get_object_or_404(Ticket, pk=pk))


@require_POST
@_shows_llm_errors("Summary")
@llm_route(tier="cheap", feature="ticket-summary")
def summarize_ticket(request: HttpRequest, pk: int) -> HttpResponse:
    """A two-sentence summary: a cheap model is good enough."""
    ticket = get_object_or_404(Ticket, pk=pk)
    started = time.perf_counter()
    with collect_records() as records:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            max_tokens=200,
            messages=[
                {"role": "system", "content": SYSTEM},
                {
                    "role": "user",
                    "content": "Summarize this ticket in two sentences.\n\n" + _ticket_text(ticket),
                },
            ],
        )
    completion = raw.parse()
    answer = RoutedAnswer.build(
        text=completion.choices[0].message.content or "",
        headers=raw.headers,
        records=records,
        requested_model=MODEL,
        usage=_openai_usage(completion.usage),
        latency_ms=(time.perf_counter() - started) * 1000,
        answered_by=completion.model,
    )
    return _page(request, ticket, action="Summary", answer=answer)


@require_POST
@_shows_llm_errors("Category")
@llm_route(feature="ticket-classify")
def classify_ticket(request: HttpRequest, pk: int) -> HttpResponse:
    """A category for the ticket. No tier hint: llmroute's classifier decides."""
    ticket = get_object_or_404(Ticket, pk=pk)
    started = time.perf_counter()
    with collect_records() as records:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            max_tokens=200,
            messages=[
                {
                    "role": "user",
                    "content": "Classify this support ticket as one of: billing, bug, how-to, "
                    "account, legal. Answer with the category only.\n\n" + _ticket_text(ticket),
                }
            ],
        )
    completion = raw.parse()
    answer = RoutedAnswer.build(
        text=completion.choices[0].message.content or "",
        headers=raw.headers,
        records=records,
        requested_model=MODEL,
        usage=_openai_usage(completion.usage),
        latency_ms=(time.perf_counter() - started) * 1000,
        answered_by=completion.model,
    )
    return _page(request, ticket, action="Category", answer=answer)


@require_POST
@_shows_llm_errors("Legal review")
@llm_route(tier="premium", feature="legal-review", max_latency_ms=8000, mode="observe")
def legal_review(request: HttpRequest, pk: int) -> HttpResponse:
    """A compliance check with the Anthropic SDK, in observe mode: the requested model
    answers, and the cost report shows what routing (premium models, under an 8 s SLA)
    would have saved."""
    ticket = get_object_or_404(Ticket, pk=pk)
    started = time.perf_counter()
    with collect_records() as records:
        raw = claude.messages.with_raw_response.create(
            model=LEGAL_MODEL,
            max_tokens=400,
            system="You review customer replies for legal and compliance risk.",
            messages=[
                {
                    "role": "user",
                    "content": "List any legal or compliance risks in answering this ticket, "
                    "and what the reply must not promise.\n\n" + _ticket_text(ticket),
                }
            ],
        )
    message = raw.parse()
    text = "".join(block.text for block in message.content if block.type == "text")
    answer = RoutedAnswer.build(
        text=text,
        headers=raw.headers,
        records=records,
        requested_model=LEGAL_MODEL,
        usage=_anthropic_usage(message.usage),
        latency_ms=(time.perf_counter() - started) * 1000,
        answered_by=message.model,
    )
    return _page(request, ticket, action="Legal review", answer=answer)


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


@require_POST
@_shows_llm_errors("Reply draft")
@llm_route(tier="balanced", feature="ticket-reply")
def draft_reply(request: HttpRequest, pk: int) -> HttpResponse:
    """A reply draft, streamed token by token (Server-Sent Events) to the page's script.

    Without JavaScript the same view waits for the whole draft and renders the page.
    """
    ticket = get_object_or_404(Ticket, pk=pk)
    started = time.perf_counter()
    # The call starts here, inside the view, so the hints above route it; the body
    # is read as the browser receives it.
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        max_tokens=300,
        stream=True,
        stream_options={"include_usage": True},
        messages=[
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Draft a reply to this ticket.\n\n" + _ticket_text(ticket)},
        ],
    )
    stream = raw.parse()
    headers = raw.headers

    records: list[UsageRecord] = []

    def pieces() -> Iterator[tuple[str, Usage | None, str | None]]:
        # The call's record is written when the stream closes: collect it then.
        with collect_records() as collected, stream:
            for chunk in stream:
                usage = _openai_usage(chunk.usage) if chunk.usage else None
                text = "".join(c.delta.content or "" for c in chunk.choices if c.delta)
                yield text, usage, chunk.model
        records.extend(collected)

    def finish(text: str, usage: Usage | None, model: str | None) -> RoutedAnswer:
        return RoutedAnswer.build(
            text=text,
            headers=headers,
            records=records,
            requested_model=MODEL,
            usage=usage or Usage(input_tokens=0, output_tokens=0, estimated=True),
            latency_ms=(time.perf_counter() - started) * 1000,
            streamed=True,
            answered_by=model,
        )

    if "text/event-stream" not in request.headers.get("Accept", ""):
        text, usage, model = "", None, None
        for piece, piece_usage, piece_model in pieces():
            text += piece
            usage, model = piece_usage or usage, piece_model or model
        return _page(request, ticket, action="Reply draft", answer=finish(text, usage, model))

    def events() -> Iterator[bytes]:
        text, usage, model = "", None, None
        try:
            for piece, piece_usage, piece_model in pieces():
                usage, model = piece_usage or usage, piece_model or model
                if piece:
                    text += piece
                    yield _sse("token", {"text": piece})
        except Exception as exc:  # tell the page; the record of the call is kept
            yield _sse("error", {"message": f"The stream broke off: {type(exc).__name__}"})
            return
        answer = finish(text, usage, model)
        panel = render_to_string("support/_routing.html", {"answer": answer})
        yield _sse("done", {"html": panel})

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
