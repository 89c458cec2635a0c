"""Small helpers for the planner's status lines (``Plan.waiting_for``, event reasons)."""

from __future__ import annotations


def plural(n: int, word: str) -> str:
    """``1 instance``, ``3 instances``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def some(ids: list[str], shown: int = 3) -> str:
    """A few ids for a status line, the rest counted."""
    rest = len(ids) - shown
    return ", ".join(ids[:shown]) + (f" and {rest} more" if rest > 0 else "")


def rps(value: float) -> str:
    """A load for people: ``120``, ``9.5``, ``0.3`` (req/s)."""
    if value >= 10 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.1f}"
