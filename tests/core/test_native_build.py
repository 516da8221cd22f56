"""The optional C extensions are built wherever a C compiler is. ``setup.py`` marks
them optional, so a compile error only leaves the package on its Python paths, with
every other test still passing: this is the test that fails then."""

from __future__ import annotations

import importlib
import shutil
import sysconfig

import pytest

from routing_middleware._native import native

_CC = (sysconfig.get_config_var("CC") or "cc").split()[0]


@pytest.mark.skipif(shutil.which(_CC) is None, reason="no C compiler: the Python paths run")
@pytest.mark.parametrize("name", ["_wordscan", "_messagescan", "_records", "_costs"])
def test_the_extension_is_built(name: str) -> None:
    module = importlib.import_module(f"routing_middleware.{name}")
    assert module.__file__ is not None
    assert not module.__file__.endswith(".py")


def test_a_part_not_built_or_turned_off_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    assert native("_no_such_extension", "scan") is None
    assert native("_records", "NoSuchName") is None  # (an older build without it)
    monkeypatch.setenv("LLMROUTE_PURE_PYTHON", "1")
    assert native("_records", "RecordMaker") is None
