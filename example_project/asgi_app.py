"""The same routing in a FastAPI app: pure ASGI middleware, hints on endpoints, a gateway.

Run it (offline unless provider keys are set)::

    .venv/bin/uvicorn example_project.asgi_app:app --port 8001

then ``POST /faq`` with ``{"question": "..."}``, or call the OpenAI-compatible gateway
at ``/v1/chat/completions`` with the API key printed at start-up. The endpoint uses
the official ``openai`` SDK unchanged; :func:`instrument` routes its calls.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from openai import AsyncOpenAI
from pydantic import BaseModel

from routing_middleware.asgi import RoutingMiddleware
from routing_middleware.auth import MemoryKeyStore
from routing_middleware.context import route_hint
from routing_middleware.engine import LLMRoute
from routing_middleware.gateway import gateway_app
from routing_middleware.transport import instrument, uninstrument

#: The same routing as the Django site's ``LLMROUTE``, in the core's own spelling.
_KEY_VARIABLES = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY")

CONFIG: dict[str, Any] = {
    "providers": {"openai": {}, "anthropic": {}, "gemini": {}},
    # No key at all: FakeProvider answers everything, whatever key the SDK carries.
    "offline": "auto" if any(os.environ.get(v) for v in _KEY_VARIABLES) else "always",
    "offline_latency": "none" if os.environ.get("LLMROUTE_DEMO_FAST") == "1" else "realistic",
    "server_timing": True,
    "routing": {
        "tiers": {
            1: {"models": ["gemini/gemini-2.5-flash-lite", "openai/gpt-5-mini"]},
            2: {"models": ["gemini/gemini-2.5-flash", "openai/gpt-5.4-mini"]},
            3: {"models": ["openai/gpt-5.4", "anthropic/claude-sonnet-4-6"]},
        }
    },
}

engine = LLMRoute(CONFIG)
keys = MemoryKeyStore()
client = AsyncOpenAI(api_key=os.environ.get("OPENAI_API_KEY", "offline-demo"))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Route the process's LLM calls while the app runs; hand out a gateway key."""
    instrument(engine)
    plaintext, _ = keys.create(owner="demo", name="example")
    print(f"Gateway API key for this run: {plaintext}")
    print(f"Mode: {'offline (FakeProvider)' if engine.is_offline else 'live providers'}")
    try:
        yield
    finally:
        uninstrument()
        await engine.aclose()


app = FastAPI(title="llmroute FastAPI example", lifespan=lifespan)
app.add_middleware(RoutingMiddleware, engine=engine)


class Question(BaseModel):
    """A customer's question for the help center."""

    question: str


@app.get("/")
async def index() -> dict[str, Any]:
    """What this app serves, and whether its providers are live."""
    return {
        "mode": "offline" if engine.is_offline else "live",
        "offline_providers": sorted(engine.offline_providers),
        "endpoints": ["POST /faq", "POST /faq/stream", "POST /v1/chat/completions"],
    }


@app.post("/faq")
@route_hint(tier="cheap", feature="faq-answer")
async def faq(body: Question) -> dict[str, Any]:
    """Answer from a cheap model; report which one answered and what it cost."""
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-5.4",
        messages=[
            {"role": "system", "content": "Answer help-center questions in two sentences."},
            {"role": "user", "content": body.question},
        ],
    )
    completion = raw.parse()
    return {
        "answer": completion.choices[0].message.content,
        "model": raw.headers.get("x-llmroute-model"),
        "cost_usd": raw.headers.get("x-llmroute-cost-usd"),
        "requested_cost_usd": raw.headers.get("x-llmroute-requested-cost-usd"),
        "decision": raw.headers.get("x-llmroute-decision"),
    }


@app.post("/faq/stream")
@route_hint(tier="balanced", feature="faq-answer-stream")
async def faq_stream(body: Question) -> StreamingResponse:
    """The answer as plain text, streamed as the model writes it."""
    stream = await client.chat.completions.create(
        model="gpt-5.4", stream=True, messages=[{"role": "user", "content": body.question}]
    )

    async def text() -> AsyncIterator[str]:
        async with stream:
            async for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta.content:
                        yield choice.delta.content

    return StreamingResponse(text(), media_type="text/plain; charset=utf-8")


# The OpenAI- and Anthropic-compatible gateway: /v1/chat/completions, /v1/messages, /v1/models.
# Mounted last, at the root, so its /v1/... paths sit beside the endpoints above.
app.mount("/", gateway_app(engine, authenticator=keys))
