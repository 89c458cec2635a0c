"""Long-poll support: wake every waiter when the store changed, let each re-check.

All store writes happen on the event loop's thread, so "check the predicate, then wait
on the current event" has no gap in which a change could slip by: ``notify`` swaps in a
fresh event after setting the old one, and a waiter always holds the event that was
current when it last checked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Watch:
    def __init__(self) -> None:
        self._event: asyncio.Event | None = None
        self.notifications = 0
        self.closed = False

    def close(self) -> None:
        """Shutting down: every waiter answers now (long-polls end with 204 at once)."""
        self.closed = True
        self.notify()

    def __repr__(self) -> str:
        return f"Watch(notifications={self.notifications})"

    def _current(self) -> asyncio.Event:
        if self._event is None:
            self._event = asyncio.Event()
        return self._event

    def notify(self) -> None:
        self.notifications += 1
        event, self._event = self._event, None
        if event is not None:
            event.set()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """True as soon as ``predicate()`` holds; False when ``timeout`` seconds pass first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while True:
            if predicate():
                return True
            if self.closed:
                return False
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            event = self._current()
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                return predicate()
