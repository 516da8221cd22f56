"""Types of the C word pass (``_wordscan.c``)."""

class WordScan:
    """The words a classifier has looked at, and a pass over a text's words."""

    def __init__(
        self,
        fold: bytes,
        phrases: tuple[tuple[int, bytes], ...],
        *,
        markers: tuple[bytes, ...] = (),
        always: int = 0,
        latex: tuple[bytes, ...] = (),
    ) -> None: ...
    def add(self, word: bytes, flags: int, phrases: int, markers: int, folded: bool, /) -> None:
        """What a folded word brings: its cue classes (and 32 for a greeting), phrase
        bits, marker bits."""
    def scan(
        self, lowered: bytes, /
    ) -> tuple[list[int], int, bool, bytes | None] | tuple[None, list[bytes], None, None]:
        """The counts, marker bits, whether a cue holds a folded digit, and the first
        word of a lowered, UTF-8 encoded text; or the words it has not seen yet."""
    def features(
        self, text: str, /
    ) -> tuple[int, int, int, int, int, int, int] | list[bytes] | None:
        """What the built-in scorer weighs in a plain-ASCII text (maths, reasoning,
        domain, steps, tasks, simple, code); the words it has not seen yet; or None
        when the Python path must read the text."""
    def __len__(self) -> int: ...
