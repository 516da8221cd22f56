"""Dataclass instances made in one call, for the router's hot path.

A frozen dataclass's generated ``__init__`` sets each field through
``object.__setattr__``, a slot-wrapper call per field: about a microsecond for the
eleven-field ``Decision``; any dataclass's costs a Python call. ``record_maker(cls)``
gives a callable that makes the same ``cls`` from one positional value per field,
in field order: the C ``RecordMaker`` (``_records.c``) where the extension is built,
else ``cls`` itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from ._native import native

__all__ = ["record_maker"]

T = TypeVar("T")

#: The maker in C (``_records.c``), or ``None``: then the dataclass itself.
_NativeRecordMaker: Any = native("_records", "RecordMaker")


def record_maker(cls: type[T]) -> Callable[..., T]:
    """A callable making a ``cls`` (a dataclass with no ``__post_init__``, which the
    C maker would not run) from one value per field, in field order."""
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__ a record maker would skip")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if any(not f.init or f.kw_only for f in fields):
        # (``cls(*values)``, the Python path, would take other arguments than the maker)
        raise TypeError(f"{cls.__name__} has fields its __init__ takes not by position")
    if _NativeRecordMaker is None:
        return cls
    names = tuple(f.name for f in fields)
    made: Callable[..., T] = _NativeRecordMaker(cls, names)
    return made
