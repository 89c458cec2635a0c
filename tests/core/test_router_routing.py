"""Routing policy: pins honoured, weights for new sessions, re-pin, draining fallback, p2c."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from skewless.core.model import VersionState
from skewless.core.routing import (
    NEW,
    REPINNED,
    ROUTED,
    VersionPool,
    compile_policy,
    decide,
    eligible,
    least_outstanding,
)


@dataclass(eq=False)
class Fake:
    name: str
    inflight: int = 0
    up: bool = True


def pool(version: str, state: str, weight: float, *insts: tuple[str, Fake]) -> VersionPool[Fake]:
    candidates, ready = eligible(list(insts), lambda b: b.up)
    return VersionPool(
        version=version,
        state=VersionState(state),
        weight=weight,
        candidates=candidates,
        ready=ready,
    )


A, B, C, D = Fake("a"), Fake("b"), Fake("c"), Fake("d")


def test_eligible_prefers_ready_then_draining_then_nothing() -> None:
    down = Fake("down", up=False)
    assert eligible([("ready", A), ("draining", B)], lambda b: b.up) == ((A,), True)
    assert eligible([("ready", down), ("draining", B)], lambda b: b.up) == ((B,), False)
    assert eligible([("ready", down)], lambda b: b.up) == ((), False)


def test_valid_pin_goes_to_its_version_while_live_or_draining() -> None:
    policy = compile_policy(
        [pool("v1", "draining", 0.0, ("ready", A)), pool("v2", "live", 1.0, ("ready", B))]
    )
    chosen, kind = decide(policy, "v1", 0.5)
    assert chosen is not None and chosen.version == "v1" and kind == ROUTED
    chosen, kind = decide(policy, None, 0.5)
    assert chosen is not None and chosen.version == "v2" and kind == NEW


def test_pin_to_retired_or_unknown_version_is_repinned_by_weight() -> None:
    policy = compile_policy(
        [pool("v1", "retired", 0.0, ("ready", A)), pool("v2", "live", 1.0, ("ready", B))]
    )
    for pinned in ("v1", "v0"):
        chosen, kind = decide(policy, pinned, 0.3)
        assert chosen is not None and chosen.version == "v2" and kind == REPINNED


def test_pinned_version_without_instances_is_not_moved() -> None:
    policy = compile_policy(
        [
            pool("v1", "live", 0.0, ("ready", Fake("x", up=False))),
            pool("v2", "live", 1.0, ("ready", B)),
        ]
    )
    chosen, kind = decide(policy, "v1", 0.3)
    assert chosen is not None and chosen.version == "v1" and chosen.candidates == ()
    assert kind == ROUTED


def test_draining_instances_serve_pinned_work_but_never_new_sessions() -> None:
    policy = compile_policy(
        [pool("v1", "live", 1.0, ("draining", A)), pool("v2", "live", 0.0, ("ready", B))]
    )
    chosen, _ = decide(policy, "v1", 0.1)
    assert chosen is not None and chosen.candidates == (A,)
    for r in (0.0, 0.5, 0.99):  # v1 only has a draining instance: new work falls to v2
        chosen, _ = decide(policy, None, r)
        assert chosen is not None and chosen.version == "v2"


def test_no_servable_version_means_none() -> None:
    policy = compile_policy([pool("v1", "live", 1.0), pool("v2", "retired", 0.0, ("ready", B))])
    assert decide(policy, None, 0.5) == (None, NEW)


def test_weights_split_new_sessions() -> None:
    policy = compile_policy(
        [pool("v1", "live", 0.25, ("ready", A)), pool("v2", "live", 0.75, ("ready", B))]
    )
    rng = random.Random(7)
    counts = Counter(decide(policy, None, rng.random())[0].version for _ in range(4000))  # type: ignore[union-attr]
    assert 800 < counts["v1"] < 1200
    assert counts["v1"] + counts["v2"] == 4000


@given(
    weights=st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=5),
    states=st.lists(st.sampled_from(["live", "draining", "retired"]), min_size=5, max_size=5),
    ups=st.lists(st.booleans(), min_size=5, max_size=5),
    pinned=st.one_of(st.none(), st.sampled_from(["v0", "v1", "v2", "v3", "v4", "zz"])),
    r=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_policy_invariants(
    weights: list[float], states: list[str], ups: list[bool], pinned: str | None, r: float
) -> None:
    pools = [
        pool(f"v{i}", states[i], w, ("ready", Fake(f"i{i}", up=ups[i])))
        for i, w in enumerate(weights)
    ]
    policy = compile_policy(pools)
    chosen, kind = decide(policy, pinned, r)
    by_name = {p.version: p for p in pools}
    target = by_name.get(pinned) if pinned else None
    if target is not None and target.state is not VersionState.RETIRED:
        assert kind == ROUTED and chosen is target  # a valid pin is never moved
        return
    assert kind == (NEW if pinned is None else REPINNED)
    if chosen is not None:  # new work only to a live version with a ready, up instance
        assert chosen.state is VersionState.LIVE and chosen.ready and chosen.candidates
        weighted = [
            p for p in pools if p.state is VersionState.LIVE and p.candidates and p.weight > 0
        ]
        if weighted:
            assert chosen.weight > 0
    else:
        assert not any(p.state is VersionState.LIVE and p.candidates for p in pools)


@given(
    loads=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=8),
    seed=st.integers(),
)
def test_least_outstanding_never_picks_the_worse_of_its_two(loads: list[int], seed: int) -> None:
    backends = [Fake(str(i), inflight=n) for i, n in enumerate(loads)]
    rng = random.Random(seed)
    chosen = least_outstanding(backends, rng.random)
    assert chosen in backends
    if len(backends) == 2:
        assert chosen is not None and chosen.inflight == min(loads)


def test_least_outstanding_excludes_tried_and_balances() -> None:
    assert least_outstanding([A, B], random.random, exclude=(A,)) is B
    assert least_outstanding([A], random.random, exclude=(A,)) is None
    backends = [Fake(str(i)) for i in range(4)]
    rng = random.Random(1)
    for _ in range(400):
        b = least_outstanding(backends, rng.random)
        assert b is not None
        b.inflight += 1
    assert max(b.inflight for b in backends) - min(b.inflight for b in backends) <= 2
