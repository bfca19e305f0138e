"""Every lifecycle table in `gpumux.core.states`, walked pair by pair against `transition()`."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

import pytest

from gpumux.core.states import (
    AWAKE_STATES,
    DAEMON_TRANSITIONS,
    MODEL_TRANSITIONS,
    PROCESS_ALIVE_STATES,
    REQUEST_TRANSITIONS,
    WAKEABLE_STATES,
    DaemonState,
    IllegalTransition,
    ModelState,
    RequestState,
    transition,
)

pytestmark = pytest.mark.unit

Table = Mapping[StrEnum, frozenset[StrEnum]]
TABLES: dict[str, tuple[type[StrEnum], Table]] = {
    "model": (ModelState, MODEL_TRANSITIONS),  # type: ignore[dict-item]
    "request": (RequestState, REQUEST_TRANSITIONS),  # type: ignore[dict-item]
    "daemon": (DaemonState, DAEMON_TRANSITIONS),  # type: ignore[dict-item]
}


def every_pair() -> list[tuple[str, StrEnum, StrEnum]]:
    return [
        (name, current, target)
        for name, (enum, _) in TABLES.items()
        for current in enum
        for target in enum
    ]


@pytest.mark.parametrize("name", TABLES)
def test_table_has_a_row_for_every_state(name: str) -> None:
    """No state is missing from its table (a missing row would raise KeyError, not refuse)."""
    enum, table = TABLES[name]
    assert set(table) == set(enum)
    for targets in table.values():
        assert targets <= set(enum)


@pytest.mark.parametrize(
    ("name", "current", "target"),
    every_pair(),
    ids=[f"{n}:{c.value}->{t.value}" for n, c, t in every_pair()],
)
def test_every_pair_follows_its_table(name: str, current: StrEnum, target: StrEnum) -> None:
    """A listed edge returns the target and is observed once; any other edge raises."""
    _, table = TABLES[name]
    heard: list[tuple[str, StrEnum, StrEnum]] = []

    def observer(what: str, old: StrEnum, new: StrEnum) -> None:
        heard.append((what, old, new))

    if target in table[current]:
        assert transition(table, current, target, what="thing", observer=observer) is target
        assert heard == [("thing", current, target)]
    else:
        with pytest.raises(IllegalTransition) as info:
            transition(table, current, target, what="thing", observer=observer)
        assert heard == []
        assert (info.value.what, info.value.current, info.value.target) == (
            "thing",
            current,
            target,
        )
        assert f"{current.value} -> {target.value}" in str(info.value)


def test_transition_without_observer_still_guards() -> None:
    """The observer is optional; the guard is not."""
    assert transition(MODEL_TRANSITIONS, ModelState.STOPPED, ModelState.STARTING, what="m") is (
        ModelState.STARTING
    )
    with pytest.raises(IllegalTransition):
        transition(MODEL_TRANSITIONS, ModelState.STOPPED, ModelState.READY, what="m")


TERMINAL_REQUEST_STATES = {
    RequestState.RELEASED,
    RequestState.REJECTED,
    RequestState.TIMED_OUT,
    RequestState.CANCELLED,
    RequestState.WITHDRAWN,
}


@pytest.mark.parametrize("state", sorted(TERMINAL_REQUEST_STATES))
def test_terminal_request_states_have_no_exits(state: RequestState) -> None:
    """A request's outcome is final: nothing leaves released/rejected/timed_out/cancelled,
    nor a standing grant once withdrawn."""
    assert REQUEST_TRANSITIONS[state] == frozenset()


def test_every_live_request_state_can_end() -> None:
    """Each non-terminal request state has an exit, and every path ends in one outcome."""
    for state in set(RequestState) - TERMINAL_REQUEST_STATES:
        assert REQUEST_TRANSITIONS[state], state
        assert reachable(REQUEST_TRANSITIONS, state) & TERMINAL_REQUEST_STATES, state  # type: ignore[arg-type]


def reachable(table: Table, start: StrEnum) -> set[StrEnum]:
    seen: set[StrEnum] = set()
    todo = [start]
    while todo:
        for nxt in table[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_model_state_is_reachable_from_stopped() -> None:
    """No model state is dead code: a fresh (stopped) model can get everywhere."""
    assert reachable(MODEL_TRANSITIONS, ModelState.STOPPED) | {ModelState.STOPPED} == set(  # type: ignore[arg-type]
        ModelState
    )


def test_every_model_state_can_get_back_to_stopped() -> None:
    """No model state is a trap: shutdown can always reach stopped."""
    for state in ModelState:
        if state is not ModelState.STOPPED:
            assert ModelState.STOPPED in reachable(MODEL_TRANSITIONS, state), state  # type: ignore[arg-type]


def test_wakeable_states_lead_to_waking() -> None:
    """Every state a wake can start from has the edge to waking."""
    for state in WAKEABLE_STATES:
        assert ModelState.WAKING in MODEL_TRANSITIONS[state], state


def test_state_groups_are_consistent() -> None:
    """Awake states have a process; sleepers/suspended have one but hold no reservation."""
    assert AWAKE_STATES <= PROCESS_ALIVE_STATES
    alive_but_not_awake = PROCESS_ALIVE_STATES - AWAKE_STATES
    assert alive_but_not_awake == {ModelState.SLEEPING, ModelState.SUSPENDED}
    assert not WAKEABLE_STATES & AWAKE_STATES
    assert ModelState.CHECKPOINTED not in PROCESS_ALIVE_STATES
    assert ModelState.STOPPED not in PROCESS_ALIVE_STATES
    assert ModelState.FAILED not in PROCESS_ALIVE_STATES


def test_daemon_ends_stopped_and_stays_there() -> None:
    """The daemon lifecycle is one way: starting, serving, draining, stopped."""
    assert DAEMON_TRANSITIONS[DaemonState.STOPPED] == frozenset()
    for state in DaemonState:
        if state is not DaemonState.STOPPED:
            assert DaemonState.STOPPED in reachable(DAEMON_TRANSITIONS, state)  # type: ignore[arg-type]
