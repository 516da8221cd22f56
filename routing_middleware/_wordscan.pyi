"""Types of the C word pass (``_wordscan.c``)."""

class WordScan:
    """The words a classifier has looked at, and a pass over a text's words."""

    def __init__(self, fold: bytes, phrases: tuple[tuple[int, bytes], ...]) -> None: ...
    def add(self, word: bytes, flags: int, phrases: int, markers: int, folded: bool, /) -> None:
        """What a folded word brings: its cue classes, phrase bits, marker bits."""
    def scan(
        self, lowered: bytes, /
    ) -> tuple[list[int], int, bool, bytes | None] | tuple[None, list[bytes], None, None]:
        """The counts, marker bits, whether a cue holds a folded digit, and the first
        word of a lowered, UTF-8 encoded text; or the words it has not seen yet."""
    def __len__(self) -> int: ...
