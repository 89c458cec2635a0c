"""Restart backoff: doubling delays, a cap, a window, and the crash-loop verdict."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skewless.core.backoff import BackoffPolicy, GiveUp, Restart, on_crash

POLICY = BackoffPolicy(base=1.0, factor=2.0, cap=5.0, window=100.0, max_restarts=4)


def test_delays_double_up_to_the_cap_then_a_crash_loop_gives_up() -> None:
    crashes: tuple[float, ...] = ()
    delays = []
    now = 1000.0
    for _ in range(4):
        verdict = on_crash(POLICY, crashes, now)
        assert isinstance(verdict, Restart)
        assert verdict.at == now + verdict.delay
        delays.append(verdict.delay)
        crashes = verdict.crashes
        now = verdict.at + 1
    assert delays == [1.0, 2.0, 4.0, 5.0]
    verdict = on_crash(POLICY, crashes, now)
    assert isinstance(verdict, GiveUp)
    assert "crash loop: 5 crashes within 100s" in verdict.reason


def test_old_crashes_are_forgotten() -> None:
    verdict = on_crash(POLICY, (0.0, 1.0, 2.0, 3.0), 500.0)
    assert isinstance(verdict, Restart)
    assert verdict.delay == 1.0 and verdict.crashes == (500.0,)


def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(base=2.0, cap=1.0)


@given(st.lists(st.floats(min_value=0, max_value=1000), max_size=20), st.floats(0, 2000))
def test_delay_never_exceeds_the_cap(history: list[float], now: float) -> None:
    verdict = on_crash(POLICY, tuple(sorted(t for t in history if t <= now)), now)
    if isinstance(verdict, Restart):
        assert 0 <= verdict.delay <= POLICY.cap
        assert len(verdict.crashes) <= POLICY.max_restarts
    else:
        assert len(verdict.crashes) > POLICY.max_restarts
