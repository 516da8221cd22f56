"""Compact JSON text, as the providers' wire formats are written."""

from __future__ import annotations

import json

__all__ = ["compact"]

#: ``json.dumps(value, ensure_ascii=False, separators=(",", ":"))`` with the encoder
#: made once: ``json.dumps`` given options makes a new encoder on every call, which
#: on a stream is every event.
compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
