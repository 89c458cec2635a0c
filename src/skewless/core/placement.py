"""Where a new instance goes and what it is called.

Slots: a host runs at most ``slots`` instances of all apps; those of other apps come with
the snapshot, and an instance of this app holds its slot until its process is gone
(``capacity.occupies_slot``). New instances go to live hosts with a free slot, spread:
first the hosts with the fewest instances of the new version, then (side-by-side) hosts
that run the old version, then the most free slots, then the host id, so that the same
snapshot always gives the same placement.

Ids are ``HOST/APP/VERSION/N`` with the smallest N that no instance of the snapshot (nor
any forgotten one in ``past_instance_ids``) uses: replaying a snapshot after a crash
proposes the same ids, and an id is never given to two processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from skewless.core.capacity import occupies_slot
from skewless.core.plan import FleetSnapshot


def free_slots(snapshot: FleetSnapshot) -> dict[str, int]:
    """Free slots per live host (hosts that are down get none)."""
    used: dict[str, int] = {}
    for instance in snapshot.instances:
        if occupies_slot(instance):
            used[instance.host] = used.get(instance.host, 0) + 1
    free: dict[str, int] = {}
    for host in snapshot.hosts:
        if not host.alive:
            continue
        left = host.slots - snapshot.other_apps_slots.get(host.id, 0) - used.get(host.id, 0)
        free[host.id] = max(0, left)
    return free


def place(
    count: int,
    free: Mapping[str, int],
    *,
    new_per_host: Mapping[str, int],
    prefer: Iterable[str] = (),
) -> list[str]:
    """Hosts for ``count`` new instances (fewer if slots run out), one entry per instance."""
    preferred = set(prefer)
    left = {h: n for h, n in free.items() if n > 0}
    placed_new = dict(new_per_host)
    chosen: list[str] = []
    for _ in range(count):
        if not left:
            break
        host = min(
            left,
            key=lambda h: (placed_new.get(h, 0), h not in preferred, -left[h], h),
        )
        chosen.append(host)
        placed_new[host] = placed_new.get(host, 0) + 1
        left[host] -= 1
        if left[host] == 0:
            del left[host]
    return chosen


class IdAllocator:
    """Hands out the next free ``HOST/APP/VERSION/N`` ids of one snapshot."""

    def __init__(self, app: str, version: str, taken: Iterable[str]) -> None:
        self._app = app
        self._version = version
        self._taken = set(taken)
        self._next: dict[str, int] = {}

    def next_id(self, host: str) -> str:
        n = self._next.get(host, 0)
        while True:
            candidate = f"{host}/{self._app}/{self._version}/{n}"
            n += 1
            if candidate not in self._taken:
                self._taken.add(candidate)
                self._next[host] = n
                return candidate
