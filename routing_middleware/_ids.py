"""Random identifiers for records, calls and requests, without a syscall each.

``uuid.uuid4()`` reads the kernel's random source on every call; where system
calls are costly that was a measurable share of a routed call. These identifiers
need to be unique, not secret: a per-process generator seeded from the kernel's
source (and reseeded in a forked child, which would otherwise repeat its parent's
sequence) gives UUID4-shaped hex at a fraction of the cost.
"""

from __future__ import annotations

import os
import random

_generator = random.Random()
os.register_at_fork(after_in_child=_generator.seed)

_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant


def new_id() -> str:
    """32 hex digits shaped like a UUID4 (``uuid.UUID(new_id()).version == 4``)."""
    return f"{_generator.getrandbits(128) & _CLEAR | _SET:032x}"
