"""Exact-match response cache for deterministic requests.

Only *cacheable* requests are looked up: temperature 0, or an explicit hint
(``cache=True`` at dispatch). The key is a hash of the normalized request (minus
fields that do not change the answer: ``stream``, ``user``, ``metadata``, the
requested model name) and the model that serves it. An entry keeps the response
and what it cost, so a hit can record the money it saved.

Stores: :class:`MemoryCacheStore` (TTL + LRU, ``cachetools``) and
:class:`RedisCacheStore` (shared by workers; ``redis`` imported lazily).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from ._outage import StoreOutage, outage_of
from ._redis import RedisClients
from .schema import (
    ChatRequest,
    ChatResponse,
    Choice,
    FinishReason,
    Message,
    StreamChunk,
    ToolCall,
    ToolCallDelta,
)

__all__ = [
    "CacheEntry",
    "CacheStore",
    "MemoryCacheStore",
    "RedisCacheStore",
    "ResponseCache",
    "assemble",
    "is_cacheable",
    "replay_chunks",
]

_IGNORED_FIELDS = frozenset({"model", "stream", "user", "metadata"})


def is_cacheable(request: ChatRequest, hint: bool | None = None) -> bool:
    """``hint`` when given, else whether ``request`` asks for temperature 0."""
    if hint is not None:
        return hint
    return request.temperature == 0


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A cached answer and what producing it cost (for the saving a hit records)."""

    response: ChatResponse
    cost: Decimal

    def to_json(self) -> str:
        return json.dumps(
            {"r": self.response.model_dump(mode="json", exclude_none=True), "c": str(self.cost)},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> CacheEntry:
        data = json.loads(raw)
        return cls(ChatResponse.model_validate(data["r"]), Decimal(data["c"]))


class CacheStore(Protocol):
    """Where entries live; ``get``/``set`` never raise for a missing key."""

    def get(self, key: str) -> CacheEntry | None: ...

    def set(self, key: str, entry: CacheEntry) -> None: ...

    async def aget(self, key: str) -> CacheEntry | None: ...

    async def aset(self, key: str, entry: CacheEntry) -> None: ...


class MemoryCacheStore:
    """In-process entries with a TTL, the least recently used evicted past ``maxsize``."""

    def __init__(
        self,
        maxsize: int = 1024,
        ttl_s: float = 3600.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        from cachetools import TTLCache

        self._lock = threading.Lock()
        self._entries: TTLCache[str, CacheEntry] = TTLCache(maxsize=maxsize, ttl=ttl_s, timer=timer)

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            return self._entries.get(key)

    def set(self, key: str, entry: CacheEntry) -> None:
        with self._lock:
            self._entries[key] = entry

    async def aget(self, key: str) -> CacheEntry | None:
        return self.get(key)

    async def aset(self, key: str, entry: CacheEntry) -> None:
        self.set(key, entry)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class RedisCacheStore:
    """Entries in Redis under ``{prefix}{key}``, expiring after ``ttl_s``."""

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        async_client: Any = None,
        prefix: str = "llmroute:cache:",
        ttl_s: int = 3600,
    ) -> None:
        if url is None and client is None and async_client is None:
            raise ValueError("RedisCacheStore needs a url or a client")
        self._redis = RedisClients("RedisCacheStore", url, client, async_client)
        #: The outage state of this store's Redis (see :class:`~._outage.StoreOutage`).
        self.outage: StoreOutage = self._redis.outage
        self.prefix = prefix
        self.ttl_s = ttl_s

    def close(self) -> None:
        """Close the sync client this store opened itself (not one it was given)."""
        self._redis.close()

    async def aclose(self) -> None:
        """Close the clients this store opened itself (not ones it was given)."""
        self.close()
        await self._redis.aclose()

    def get(self, key: str) -> CacheEntry | None:
        raw = self._redis.sync_client().get(self.prefix + key)
        return None if raw is None else CacheEntry.from_json(raw)

    def set(self, key: str, entry: CacheEntry) -> None:
        self._redis.sync_client().set(self.prefix + key, entry.to_json(), ex=self.ttl_s)

    async def aget(self, key: str) -> CacheEntry | None:
        raw = await self._redis.async_client().get(self.prefix + key)
        return None if raw is None else CacheEntry.from_json(raw)

    async def aset(self, key: str, entry: CacheEntry) -> None:
        await self._redis.async_client().set(self.prefix + key, entry.to_json(), ex=self.ttl_s)


class ResponseCache:
    """Keys requests and reads/writes a store (in memory by default).

    A store failure (Redis down, or not answering within its timeout) is a miss,
    never a failed call; the store is then left alone for
    :data:`~._outage.STORE_RETRY_S` at a time, with one warning per outage.
    """

    def __init__(self, store: CacheStore | None = None, *, namespace: str = "v1") -> None:
        self.store: CacheStore = store if store is not None else MemoryCacheStore()
        self.namespace = namespace
        self._outage = outage_of(self.store, "response cache store", "calls go uncached")

    def key(self, request: ChatRequest, model: str) -> str:
        """The cache key of ``request`` served by ``model`` (a hex digest)."""
        body = request.model_dump(mode="json", exclude=set(_IGNORED_FIELDS), exclude_none=True)
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest = hashlib.sha256(f"{self.namespace}\0{model}\0{text}".encode())
        return digest.hexdigest()

    def get(self, key: str) -> CacheEntry | None:
        return self._outage.run(lambda: self.store.get(key), None)

    def set(self, key: str, entry: CacheEntry) -> None:
        self._outage.run(lambda: self.store.set(key, entry), None)

    async def aget(self, key: str) -> CacheEntry | None:
        return await self._outage.arun(lambda: self.store.aget(key), None)

    async def aset(self, key: str, entry: CacheEntry) -> None:
        await self._outage.arun(lambda: self.store.aset(key, entry), None)


def replay_chunks(response: ChatResponse) -> Iterator[StreamChunk]:
    """A complete response as the stream chunks that would have produced it.

    One role chunk, then text/reasoning and tool calls per choice, the finish
    chunk, and the usage last.
    """
    for choice in response.choices:
        message = choice.message
        yield StreamChunk(
            id=response.id, model=response.model, index=choice.index, role="assistant"
        )
        if message.reasoning:
            yield StreamChunk(
                id=response.id,
                model=response.model,
                index=choice.index,
                reasoning=message.reasoning,
            )
        if message.text:
            yield StreamChunk(
                id=response.id, model=response.model, index=choice.index, text=message.text
            )
        if message.tool_calls:
            deltas = [
                ToolCallDelta(index=i, id=call.id, name=call.name, arguments=call.arguments)
                for i, call in enumerate(message.tool_calls)
            ]
            yield StreamChunk(
                id=response.id, model=response.model, index=choice.index, tool_calls=deltas
            )
        yield StreamChunk(
            id=response.id,
            model=response.model,
            index=choice.index,
            finish_reason=choice.finish_reason,
            native_finish_reason=choice.native_finish_reason,
        )
    if response.usage is not None:
        yield StreamChunk(id=response.id, model=response.model, usage=response.usage)


def assemble(
    chunks: list[StreamChunk], *, response_id: str, model: str, provider: str | None
) -> ChatResponse:
    """The complete response a finished stream of ``chunks`` amounts to."""
    texts: dict[int, list[str]] = {}
    thoughts: dict[int, list[str]] = {}
    calls: dict[int, dict[int, list[str | None]]] = {}
    finish: dict[int, StreamChunk] = {}
    usage = None
    for chunk in chunks:
        index = chunk.index
        texts.setdefault(index, [])
        if chunk.text:
            texts[index].append(chunk.text)
        if chunk.reasoning:
            thoughts.setdefault(index, []).append(chunk.reasoning)
        for delta in chunk.tool_calls or ():
            slot = calls.setdefault(index, {}).setdefault(delta.index, [None, None, ""])
            slot[0] = slot[0] or delta.id
            slot[1] = slot[1] or delta.name
            slot[2] = (slot[2] or "") + delta.arguments
        if chunk.finish_reason is not None:
            finish[index] = chunk
        if chunk.usage is not None:
            usage = chunk.usage
    choices = []
    for index in sorted(texts):
        tool_calls = [
            ToolCall(
                id=slot[0] or f"call_{index}_{n}", name=slot[1] or "", arguments=slot[2] or "{}"
            )
            for n, slot in sorted(calls.get(index, {}).items())
        ]
        message = Message(
            role="assistant",
            content="".join(texts[index]) or None,
            reasoning="".join(thoughts[index]) if index in thoughts else None,
            tool_calls=tool_calls or None,
        )
        last = finish.get(index)
        choices.append(
            Choice(
                index=index,
                message=message,
                finish_reason=(
                    last.finish_reason if last and last.finish_reason else FinishReason.STOP
                ),
                native_finish_reason=last.native_finish_reason if last else None,
            )
        )
    return ChatResponse(
        id=response_id, model=model, provider=provider, choices=choices, usage=usage
    )
