"""Record, call and request identifiers: unique, UUID4-shaped, different after fork."""

from __future__ import annotations

import os
import sys
import uuid

import pytest

from routing_middleware._ids import new_id
from routing_middleware.metering import UsageRecord


def test_ids_are_uuid4_hex_and_do_not_repeat() -> None:
    ids = [new_id() for _ in range(50_000)]
    assert len(set(ids)) == len(ids)
    for value in ids[:100]:
        parsed = uuid.UUID(value)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert parsed.hex == value


@pytest.mark.skipif(sys.platform == "win32", reason="needs os.fork")
def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, to the parent
        os.close(read)
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    parent = new_id()
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 32
    assert child != parent


def test_records_get_fresh_ids() -> None:
    from decimal import Decimal

    from routing_middleware.schema import Usage

    def record() -> UsageRecord:
        return UsageRecord("m", "m", "p", Usage(input_tokens=1, output_tokens=1), Decimal(0))

    a, b = record(), record()
    assert a.id != b.id
    assert a.call_id != b.call_id
    assert uuid.UUID(a.id).version == 4
