"""Routing policy: pin -> version -> instance, as pure functions.

Theory of operation
-------------------
The router compiles each app of the route table, together with what it knows of instance
health, into an ``AppPolicy`` whenever either changes (rare), so that the per-request
decision is a dict lookup, a bisect and two random picks.

*Which instances can take work* (``eligible``): the ready instances of a version that
are up (health checks and passive ejection agree). Only when none is left do its
draining instances that are up take work, and then pinned work only: DESIGN.md's
"draining instances take pinned work only while no ready instance of the version remains".

*Which version* (``decide``):

- a valid pin to a version that is ``live`` or ``draining`` goes to that version, even
  when it has no eligible instance (then the caller answers 503 + Retry-After: a session
  is never moved to another version because of a hiccup);
- a valid pin to a ``retired`` or unknown version is re-assigned by weight, and the
  response says so (``REPINNED``);
- no valid pin: assigned by weight (``NEW``).

*Assignment by weight* (``compile_policy``): among ``live`` versions with weight > 0
that have a ready eligible instance, in proportion to their weights. If none qualifies
(every weighted version is down), the share falls to the other live versions with a
ready eligible instance, equally: serving a new session from a live version beats a 503.
If none of those exists either, the request gets 503.

*Which instance* (``least_outstanding``): power of two choices on in-flight requests.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from skewless.core.model import VersionState


class Backend(Protocol):
    """What the policy needs of an instance: how much work it has in flight."""

    @property
    def inflight(self) -> int: ...


B = TypeVar("B", bound=Backend)
_RETIRED = VersionState.RETIRED

ROUTED = 0
"""A valid pin, honoured."""
NEW = 1
"""No valid pin: assigned by weight, the response carries a new pin."""
REPINNED = 2
"""A pin to a retired or unknown version: re-assigned by weight (``Skewless-Repinned``)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class VersionPool(Generic[B]):
    version: str
    state: VersionState
    weight: float
    candidates: tuple[B, ...]
    """Instances that may take work now (see ``eligible``)."""
    ready: bool
    """True when ``candidates`` are ready instances, False when they are draining ones."""


@dataclass(frozen=True, kw_only=True, slots=True)
class AppPolicy(Generic[B]):
    pools: Mapping[str, VersionPool[B]]
    weighted: tuple[VersionPool[B], ...]
    """Versions that take new sessions, in the order of ``cumulative``."""
    cumulative: tuple[float, ...]
    """Upper bounds (0..1] of each weighted version's share, last one exactly 1.0."""


def eligible(
    instances: Sequence[tuple[str, B]], is_up: Callable[[B], bool]
) -> tuple[tuple[B, ...], bool]:
    """``(candidates, ready)`` from ``(instance state, backend)`` pairs."""
    ready = tuple(b for state, b in instances if state == "ready" and is_up(b))
    if ready:
        return ready, True
    return tuple(b for state, b in instances if state == "draining" and is_up(b)), False


def compile_policy(pools: Sequence[VersionPool[B]]) -> AppPolicy[B]:
    can_take_new = [
        p
        for p in pools
        if p.state is VersionState.LIVE and p.ready and p.candidates and p.weight > 0
    ]
    if can_take_new:
        weights = [p.weight for p in can_take_new]
    else:
        can_take_new = [
            p for p in pools if p.state is VersionState.LIVE and p.ready and p.candidates
        ]
        weights = [1.0] * len(can_take_new)
    total = sum(weights)
    cumulative: list[float] = []
    running = 0.0
    for w in weights:
        running += w
        cumulative.append(running / total)
    if cumulative:
        cumulative[-1] = 1.0
    return AppPolicy(
        pools={p.version: p for p in pools},
        weighted=tuple(can_take_new),
        cumulative=tuple(cumulative),
    )


def assign(policy: AppPolicy[B], r: float) -> VersionPool[B] | None:
    """The version a new session gets for a uniform ``r`` in [0, 1), or None (-> 503)."""
    weighted = policy.weighted
    if not weighted:
        return None
    if len(weighted) == 1:
        return weighted[0]
    index = bisect_right(policy.cumulative, r)
    return weighted[min(index, len(weighted) - 1)]


def decide(policy: AppPolicy[B], pinned: str | None, r: float) -> tuple[VersionPool[B] | None, int]:
    """``(version pool or None for 503, ROUTED | NEW | REPINNED)`` for one request."""
    if pinned is None:
        return assign(policy, r), NEW
    pool = policy.pools.get(pinned)
    if pool is not None and pool.state is not _RETIRED:
        return pool, ROUTED
    return assign(policy, r), REPINNED


def fallback(policy: AppPolicy[B], unreachable: str) -> VersionPool[B] | None:
    """Another version for a request not pinned yet whose assigned version ``unreachable``
    could not be connected to: a weighted one if any, else a live one, else a draining
    one, with a ready eligible instance (None: the caller answers 503). A draining
    version given a new session keeps it until the session goes idle, as for any other."""
    others = [p for p in policy.weighted if p.version != unreachable]
    for state in (VersionState.LIVE, VersionState.DRAINING):
        if others:
            break
        others = [
            p
            for p in policy.pools.values()
            if p.version != unreachable and p.state is state and p.ready and p.candidates
        ]
    return others[0] if others else None


def least_outstanding(
    candidates: Sequence[B], rand: Callable[[], float], exclude: Collection[B] = ()
) -> B | None:
    """Power of two choices: of two random candidates, the one with fewer in flight.

    ``exclude`` holds instances already tried for this request (safe retry).
    """
    if exclude:
        candidates = [c for c in candidates if c not in exclude]
    n = len(candidates)
    if n == 0:
        return None
    if n == 1:
        return candidates[0]
    # rand() < 1 and n < 2**53, so int(rand() * n) < n: no clamping needed.
    i = int(rand() * n)
    j = int(rand() * (n - 1))
    if j >= i:
        j += 1  # a distinct second choice
    a, b = candidates[i], candidates[j]
    return a if a.inflight <= b.inflight else b
