"""Types of the C record maker (``_records.c``)."""

from typing import Any

class RecordMaker:
    """A callable making a ``cls`` from one positional value per name."""

    def __init__(self, cls: type, names: tuple[str, ...]) -> None: ...
    def __call__(self, *values: Any) -> Any: ...
