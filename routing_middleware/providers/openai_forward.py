"""An OpenAI-compatible stream forwarded to an OpenAI caller as bytes.

When the caller and the provider both speak chat completions, most events of a
stream can reach the caller exactly as they came. :class:`OpenAIForwarder` splits
the upstream bytes into events and passes plain text deltas through untouched;
only the events the dispatcher must act on (usage, an in-band error, a finish
reason) or that the caller's encoder would reshape (tool calls, reasoning, content
parts, usage riding on a choice) are decoded — by the same
:class:`~.openai_stream.OpenAIStreamDecoder` the decoded path uses, so errors and
usage map identically. Until the first content event everything is decoded, so
the dispatcher learns exactly when the answer starts.

What the caller gets: the upstream's events (``data: ...`` lines, blank-line
separated), the usage-only event only when it asked for usage, reshaped events
under the upstream's own id and model, and one ``data: [DONE]`` at the end —
preceded, when the caller asked for usage and the upstream sent no usage-only
event, by one carrying the reported (or estimated) usage.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from ..schema import LLMError, UpstreamProtocolError, Usage
from .openai_caller import OpenAIStreamEncoder
from .openai_stream import OpenAIStreamDecoder

if TYPE_CHECKING:
    from ..schema import ChatRequest, StreamChunk
    from .base import ProviderConfig

__all__ = ["OpenAIForwarder"]

#: An event worth decoding once the answer flows: a non-null usage, error, finish
#: reason, tool calls or reasoning, a Groq usage carrier, or content that is not a
#: string. A quoted key in an event is a key (quotes inside strings are escaped); a
#: false alarm costs a decode, never the caller's bytes.
_NOTABLE = re.compile(
    rb'"(?:usage|error|finish_reason|tool_calls|reasoning|reasoning_content|x_groq)"'
    rb"\s*:\s*(?!\s|null)"
    rb'|"content"\s*:\s*(?!\s|null|")'
)
#: :data:`_NOTABLE` but for a finish reason.
_NOTABLE_BUT_FINISH = re.compile(
    rb'"(?:usage|error|tool_calls|reasoning|reasoning_content|x_groq)"'
    rb"\s*:\s*(?!\s|null)"
    rb'|"content"\s*:\s*(?!\s|null|")'
)
#: A finish reason that is a word (an empty one is no finish).
_FINISH_WORD = re.compile(rb'"finish_reason"\s*:\s*"[A-Za-z]')
#: The delta of the opening event chat completions servers send: the role, no text yet.
_OPENING = re.compile(rb'"delta":\{"role":"assistant"(?:,"content":"")?(?:,"refusal":null)?\}')
_LISTED = re.compile(rb'"content"\s*:\s*(?!\s|null|")')
#: The inside of a JSON string on one line: no bare quote, every backslash escaping.
_TEXT = re.compile(rb'[^"\\\r\n]*(?:\\[^\r\n][^"\\\r\n]*)*')
#: A JSON string's inside that is its own text (no escapes, no control characters).
_BARE = re.compile(rb'[^"\\\x00-\x1f]*')
_BARE_TEXT = re.compile(r'[^"\\\x00-\x1f]*')
_CONTENT = (b'"content":"', b'"content": "')
_SEP = b"\n\n"
#: Past this many bytes of reads held for :meth:`OpenAIForwarder.replay`, they are
#: decoded into its decoder and let go: what a long stream holds stays bounded.
_HOLD = 64 * 1024
_DONE = b"data: [DONE]\n\n"


def _has_content(chunk: StreamChunk) -> bool:
    return bool(
        chunk.text or chunk.reasoning or chunk.tool_calls or chunk.finish_reason is not None
    )


def _one_text(data: bytes, literal: bytes) -> bool:
    """Whether ``data`` decodes to one choice whose delta's content is ``literal``
    (a JSON string): then an event differing only there tells a decoder nothing
    but its text."""
    try:
        payload = json.loads(data)
        text = json.loads(literal)
    except ValueError:
        return False
    choices = payload.get("choices") if isinstance(payload, dict) else None
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return False
    delta = choices[0].get("delta")
    return isinstance(delta, dict) and delta.get("content") == text


class _ReplayDecoder(OpenAIStreamDecoder):
    """The decoder of a replay, told the texts of plain events it was not fed."""

    __slots__ = ()

    def count(self, text: str) -> None:
        """Count ``text`` towards the output estimate as decoding it would."""
        self._count(text)


def _counted(decoder: _ReplayDecoder, run: list[str], texts: list[str]) -> None:
    """Count the texts of plain events in a row (``run``, then emptied) as decoding
    them would have, and add them to ``texts``."""
    text = "".join(run)
    run.clear()
    if text:
        decoder.count(text)
        texts.append(text)


def _text_span(block: bytes) -> tuple[int, int] | None:
    """Where the inside of the one ``"content"`` string of the event ``block`` starts
    and ends, or ``None`` when it has no such string or several content keys."""
    for key in _CONTENT:
        at = block.find(key)
        if at >= 0:
            break
    else:
        return None
    start = at + len(key)
    if block.find(b'"content"', start) >= 0:
        return None  # several choices: not one shape
    text = _TEXT.match(block, start)
    if text is None or block[text.end() : text.end() + 1] != b'"':
        return None
    return start, text.end()


def _data_of(block: bytes) -> bytes | None:
    """The ``data`` of one event block that is not a lone ``data: ...`` line."""
    lines: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line[:1] == b":":
            continue
        name, sep, value = line.partition(b":")
        if name != b"data":
            continue
        lines.append(value[1:] if sep and value[:1] == b" " else value)
    return b"\n".join(lines) if lines else None


def _event(data: bytes) -> bytes:
    """``data`` as one event (a ``data:`` line per line of it)."""
    if b"\n" not in data:
        return b"data: " + data + _SEP
    return b"".join(b"data: " + line + b"\n" for line in data.split(b"\n")) + b"\n"


class OpenAIForwarder:
    """Forwards one ``chat.completion.chunk`` stream to an OpenAI caller.

    :meth:`feed` takes bytes as they arrive (any split, ``\\r\\n`` line ends
    included) and returns what the caller gets now — nothing until the first
    content event, then everything held so far. It raises the mapped
    :class:`LLMError` on an in-band error. :meth:`close` ends the input: a missing
    ``[DONE]`` or finish reason raises :class:`UpstreamProtocolError`, as decoding
    does. :meth:`replay` decodes everything received, for estimates after a failure.
    """

    __slots__ = (
        "_encoder",
        "_ended",
        "_estimate",
        "_first",
        "_head",
        "_held",
        "_include_usage",
        "_provider",
        "_reads",
        "_replay",
        "_replay_over",
        "_request",
        "_rest",
        "_side",
        "_size",
        "_tail",
        "_texts",
        "_usage_sent",
        "done",
        "finished",
        "started",
    )

    def __init__(self, provider: ProviderConfig, request: ChatRequest, include_usage: bool) -> None:
        self._provider = provider
        self._request = request
        self._include_usage = include_usage
        self._side = OpenAIStreamDecoder(provider, request)
        # Reads not yet decoded for replay (``_size`` bytes), then the replay decoder
        # they go into past ``_HOLD`` (made then), the texts it returned, and whether
        # it takes nothing more (it failed, as a replay stops at an error, or closed).
        # (a read that went by as a plain event as it is, any other in a 1-tuple)
        self._reads: list[bytes | tuple[bytes]] = []
        self._size = 0
        self._replay: _ReplayDecoder | None = None
        self._texts: list[str] = []
        self._replay_over = False
        self._rest = b""
        self._held: list[bytes] = []
        self._first: bytes | None = None
        self._encoder: OpenAIStreamEncoder | None = None
        self._estimate: Usage | None = None
        self._usage_sent = False
        self._ended = False
        # A plain text event seen, split around its text: events that differ from it
        # only in the text are plain too, known without a search.
        self._head = b""
        self._tail = b""
        #: the answer started (content or a finish reason arrived)
        self.started = False
        #: ``[DONE]`` arrived
        self.done = False
        #: a finish reason arrived
        self.finished = False

    @property
    def usage(self) -> Usage | None:
        """The last usage the upstream reported, or the estimate made at the end."""
        usage = self._side.usage
        return self._estimate if usage is None else usage

    def feed(self, data: bytes) -> bytes:
        """Take ``data``; the bytes the caller gets now."""
        n = len(data)
        size = self._size = self._size + n
        head = self._head
        if (
            head
            and not self._rest
            and not self.done
            and data.startswith(head)
            and data.endswith(self._tail)
            and _TEXT.fullmatch(data, len(head), n - len(self._tail)) is not None
        ):
            # one event like the last plain one but for its text: as it is
            self._reads.append(data)
            if size > _HOLD:
                self._spill()
            return data
        self._reads.append((data,))
        if size > _HOLD:
            self._spill()
        if self.done:
            return b""
        buf = self._rest + data if self._rest else data
        carry = b""
        if b"\r" in buf:
            if buf[-1:] == b"\r":  # maybe half of a \r\n: decide with the next read
                buf, carry = buf[:-1], b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        blocks = buf.split(_SEP)
        self._rest = blocks.pop() + carry
        return self._events(blocks)

    def close(self) -> bytes:
        """End of input: the rest for the caller, ``[DONE]`` last."""
        self._ended = True
        rest = self._rest.replace(b"\r", b"\n").strip(b"\n")
        self._rest = b""
        out = self._events([rest] if rest and not self.done else [])
        provider = self._provider.name
        if not self.done:
            raise UpstreamProtocolError(
                "the stream ended before its [DONE] marker (cut short)", provider=provider
            )
        if not self.finished:
            raise UpstreamProtocolError(
                "the stream sent [DONE] without a finish reason (cut short)", provider=provider
            )
        usage = self._side.usage
        if usage is None:
            usage = self._estimate = self.replay()[0].usage
        if self._include_usage and not self._usage_sent and usage is not None:
            return out + self._encoder_for(None).finish(usage)
        return out + _DONE

    def replay(self) -> tuple[OpenAIStreamDecoder, list[str]]:
        """Everything received, decoded as the decoded path would have: the decoder
        (its usage reported or estimated) and the texts of the chunks it returned
        (joined, they are the text; a long stream's early ones come joined)."""
        self._spill()
        decoder = self._replay
        assert decoder is not None
        if self._ended and not self._replay_over:
            self._replay_over = True
            try:
                self._texts.extend(chunk.text for chunk in decoder.close() if chunk.text)
            except LLMError:
                pass
        return decoder, self._texts

    def _spill(self) -> None:
        """Decode the reads held so far into the replay decoder and let them go.

        A read that went by as a plain event (see :meth:`feed`) is not decoded
        again: its text, the only thing in it that tells the decoder anything, is
        read off its known place and counted as the decoder counts it."""
        decoder = self._replay
        if decoder is None:
            decoder = self._replay = _ReplayDecoder(self._provider, self._request)
        reads = self._reads
        self._reads, self._size = [], 0
        if self._replay_over:
            return
        texts = self._texts
        run: list[bytes] = []  # plain reads in a row, taken together
        try:
            for read in reads:
                if not isinstance(read, tuple):
                    run.append(read)
                    continue
                if run:
                    self._plain_texts(decoder, run, texts)
                texts.extend(chunk.text for chunk in decoder.feed(read[0]) if chunk.text)
            if run:
                self._plain_texts(decoder, run, texts)
        except LLMError:
            self._replay_over = True
        if len(texts) > 1:
            self._texts = ["".join(texts)]

    def _plain_texts(self, decoder: _ReplayDecoder, run: list[bytes], texts: list[str]) -> None:
        """Tell ``decoder`` the texts of the plain events ``run`` (then emptied) as
        decoding them would, and add them to ``texts``."""
        start, end = len(self._head), -len(self._tail)
        raw = b"".join([data[start : len(data) + end] for data in run])
        if raw.isascii() and _BARE.fullmatch(raw) is not None:
            parts = [raw.decode("ascii")]  # no escapes: a JSON string's inside is its text
        else:
            parts = []
            for data in run:
                text = data[start : len(data) + end].decode("utf-8", "replace")
                if _BARE_TEXT.fullmatch(text) is not None:
                    parts.append(text)
                    continue
                try:
                    parts.append(json.loads(f'"{text}"'))
                except ValueError:  # decoding finds it malformed too, and says so
                    _counted(decoder, parts, texts)
                    texts.extend(chunk.text for chunk in decoder.feed(data) if chunk.text)
        run.clear()
        _counted(decoder, parts, texts)

    # ------------------------------------------------------------------ events

    def _events(self, blocks: list[bytes]) -> bytes:
        out = self._held
        started = self.started
        for block in blocks:
            if block[:6] == b"data: " and b"\n" not in block:
                data = block[6:]
                if data[:1] == b"{" and data[-1:] == b"}" and data.count(b'"delta"') == 1:
                    plain = _NOTABLE.search(data) is None
                    if started and plain:
                        out.append(block)
                        out.append(_SEP)
                        if not self._head:
                            self._learn(block)
                        continue
                    if (
                        started
                        and _FINISH_WORD.search(data)
                        and not _NOTABLE_BUT_FINISH.search(data)
                    ):
                        # a finish, nothing else the dispatcher acts on: as it is
                        self.finished = True
                        out.append(block)
                        out.append(_SEP)
                        continue
                    if not started and plain and self._opened(block, data):
                        started = True
                        out.append(block)
                        out.append(_SEP)
                        continue
                    if not started and plain and _OPENING.search(data):
                        # the opening event, no text in it: held as it is
                        if self._first is None:
                            self._first = data
                        out.append(block)
                        out.append(_SEP)
                        continue
            else:
                block = block.lstrip(b"\n")
                found = _data_of(block)
                if found is None:
                    continue  # comments, or nothing at all
                data = found
            self._decode(data, out)
            started = self.started
            if self.done:
                break
        if not self.started or not out:
            return b""
        self._held = []
        return b"".join(out)

    def _opened(self, block: bytes, data: bytes) -> bool:
        """Whether the plain event ``block`` (``data``) starts the answer with a text
        that is its own JSON (no escapes): then it is not decoded, its shape is kept
        (see :meth:`feed`) and the answer has started."""
        span = _text_span(block)
        if span is None or span[0] == span[1] or _BARE.fullmatch(block, *span) is None:
            return False
        self.started = True
        if self._first is None:
            self._first = data
        if not self._head and b'"role"' not in data:  # (events after it carry no role)
            self._keep_shape(block, span)
        return True

    def _keep_shape(self, block: bytes, span: tuple[int, int]) -> None:
        """Remember the event ``block``'s bytes around its text at ``span`` (see
        :meth:`feed`)."""
        self._head = block[: span[0]]
        self._tail = block[span[1] :] + _SEP

    def _learn(self, block: bytes) -> None:
        """Remember a plain event's bytes around its text (see :meth:`feed`): at
        once when the text is its own JSON, as :meth:`_opened` takes it, else once
        decoding shows the string found is the delta's text."""
        span = _text_span(block)
        if span is not None and (
            _BARE.fullmatch(block, *span) is not None
            or _one_text(block[6:], block[span[0] - 1 : span[1] + 1])
        ):
            self._keep_shape(block, span)

    def _learn_decoded(self, data: bytes, chunk: StreamChunk) -> None:
        """Remember the shape of a text event just decoded to ``chunk`` (see
        :meth:`feed`), checking its text against the decoded one instead of decoding
        the event again as :meth:`_learn` must."""
        text = chunk.text
        if (
            text is None
            or chunk.role is not None
            or chunk.finish_reason is not None
            or chunk.reasoning
            or chunk.tool_calls
            or chunk.usage is not None
            or b"\n" in data
            or data.count(b'"delta"') != 1
        ):
            return
        block = b"data: " + data
        span = _text_span(block)
        if span is None:
            return
        literal = block[span[0] : span[1]]
        if _BARE.fullmatch(literal) is not None:
            same = literal.decode("utf-8", "replace") == text
        else:
            try:
                same = json.loads(b'"' + literal + b'"') == text
            except ValueError:
                same = False
        if same:
            self._keep_shape(block, span)

    def _decode(self, data: bytes, out: list[bytes]) -> None:
        """An event that needs decoding: acted on, then forwarded, reshaped or dropped."""
        side = self._side
        before = side.usage
        # (``data`` is a whole event's: it goes to the decoder without the SSE parsing
        # it already had; raises the provider's in-band error, mapped)
        chunks = side.event(data.decode("utf-8", "replace"))
        if side.done:
            self.done = True
            return
        if self._first is None and data[:1] == b"{":
            self._first = data
        reshape = _LISTED.search(data) is not None
        for chunk in chunks:
            if chunk.finish_reason is not None:
                self.finished = True
            if _has_content(chunk):
                self.started = True
            if chunk.reasoning or chunk.tool_calls or chunk.usage is not None:
                reshape = True
        if not chunks:
            return  # nothing the caller would see (e.g. a prompt-filter event)
        only = chunks[0]
        usage_only = len(chunks) == 1 and only.role is None and not _has_content(only)
        if usage_only and side.usage is not before:
            if self._include_usage:
                self._usage_sent = True
                out.append(_event(data))
            return
        if not reshape:
            out.append(_event(data))
            if not self._head and self.started and len(chunks) == 1:
                self._learn_decoded(data, chunks[0])
            return
        encoder = self._encoder_for(data)
        for chunk in chunks:
            encoded = encoder.chunk(chunk)
            if encoded:
                out.append(encoded)

    def _encoder_for(self, data: bytes | None) -> OpenAIStreamEncoder:
        """The encoder of events the upstream did not send as such, under its id and model."""
        if self._encoder is None:
            head: object = None
            source = self._first or data
            if source is not None:
                try:
                    head = json.loads(source)
                except ValueError:
                    head = None
            fields = head if isinstance(head, dict) else {}
            response_id = fields.get("id")
            model = fields.get("model")
            created = fields.get("created")
            self._encoder = OpenAIStreamEncoder(
                model if isinstance(model, str) else "",
                response_id if isinstance(response_id, str) else "",
                include_usage=self._include_usage,
                created=created if isinstance(created, int) else None,
            )
            self._encoder.start()  # the upstream's own events carry the role
        return self._encoder
