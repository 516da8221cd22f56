"""Types of the native pass over a request's messages (``_messagescan.c``)."""

from typing import Any

def scan(message_type: type, messages: Any, /) -> tuple[int, str, str, int] | None:
    """The token count of the messages' texts, the last user text, the system and
    developer texts joined, and the number of turns; or None when a message (of
    another type than ``message_type``, or not plain text) needs the Python path."""
