"""State machines: legal moves happen, illegal ones raise and change nothing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skewless.core.model import (
    INSTANCE_TRANSITIONS,
    ROLLOUT_TRANSITIONS,
    TERMINAL_ROLLOUT_STATES,
    VERSION_TRANSITIONS,
    IllegalTransition,
    InstanceState,
    RolloutState,
    VersionState,
    advance,
)


def test_states_serialise_as_protocol_strings() -> None:
    assert InstanceState.READY == "ready"
    assert VersionState.RETIRED.value == "retired"
    assert RolloutState.ROLLED_BACK.value == "rolled_back"


def test_terminal_rollout_states() -> None:
    assert {
        RolloutState.SUCCEEDED,
        RolloutState.FAILED,
        RolloutState.ROLLED_BACK,
        RolloutState.ABORTED,
    } == TERMINAL_ROLLOUT_STATES


def test_illegal_transition_raises_and_keeps_state() -> None:
    state = RolloutState.SUCCEEDED
    with pytest.raises(IllegalTransition, match="succeeded -> progressing"):
        state = advance(ROLLOUT_TRANSITIONS, state, RolloutState.PROGRESSING)
    assert state is RolloutState.SUCCEEDED


def test_paused_and_progressing_alternate() -> None:
    s = advance(ROLLOUT_TRANSITIONS, RolloutState.PROGRESSING, RolloutState.PAUSED)
    assert advance(ROLLOUT_TRANSITIONS, s, RolloutState.PROGRESSING) is RolloutState.PROGRESSING


@given(
    st.sampled_from(
        [
            (INSTANCE_TRANSITIONS, list(InstanceState)),
            (VERSION_TRANSITIONS, list(VersionState)),
            (ROLLOUT_TRANSITIONS, list(RolloutState)),
        ]
    ),
    st.data(),
)
def test_advance_agrees_with_table(machine: tuple[dict, list], data: st.DataObject) -> None:  # type: ignore[type-arg]
    table, states = machine
    current = data.draw(st.sampled_from(states))
    target = data.draw(st.sampled_from(states))
    allowed = current == target or target in table[current]
    if allowed:
        assert advance(table, current, target) == target
    else:
        with pytest.raises(IllegalTransition):
            advance(table, current, target)
