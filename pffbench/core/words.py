"""Wording shared by every floor's messages."""
from __future__ import annotations


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 run``, ``2 runs``."""
    return f"{n} {word if n == 1 else (many or word + 's')}"
