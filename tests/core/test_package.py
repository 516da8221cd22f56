"""The package's promises at import: cheap, inert, Django-free; exported names pinned."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import routing_middleware


def _run(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout


def test_public_names_are_pinned() -> None:
    exports = routing_middleware._EXPORTS
    assert routing_middleware.__all__ == sorted([*exports, "__version__"])
    for name in routing_middleware.__all__:
        assert getattr(routing_middleware, name) is not None


def test_unknown_attribute_raises() -> None:
    with pytest.raises(AttributeError, match="does_not_exist"):
        routing_middleware.does_not_exist  # type: ignore[attr-defined]  # noqa: B018


def test_import_is_inert() -> None:
    out = _run(
        "import sys, threading; before = threading.active_count();"
        "import routing_middleware;"
        "import json; print(json.dumps({"
        "'django': any(m == 'django' or m.startswith('django.') for m in sys.modules),"
        "'threads': threading.active_count() - before,"
        "'catalog_loaded': 'routing_middleware.catalog' in sys.modules}))"
    )
    state = json.loads(out)
    assert state == {"django": False, "threads": 0, "catalog_loaded": False}
