"""``skewless resume APP``: see ``action.SUMMARY``."""

from __future__ import annotations

from skewless.commands.action import run_action


def main(argv: list[str]) -> int:
    return run_action("resume", argv)
