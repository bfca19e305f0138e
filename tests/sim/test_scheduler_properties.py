"""Scheduler invariants under random load, disconnects and failures (hypothesis).

The real `SchedulerCore` and policies run inside the simulator's event loop; an observer
checks every command list the core returns:
- memory: the placement footprint of every model, as the core holds them, fits each GPU;
- grants: a request is granted only to a model that is READY at that moment;
- outcomes: each request ends exactly once (granted, rejected, or its client left while
  it was queued), and every granted request is released exactly once;
- the wait bound: when the offered load is below capacity (every waiting model can be
  reached by one switch, one minimum visit and one drain per model ahead of it within
  `max_wait_secs`), no request waits longer than `max_wait_secs` plus one switch.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from gpumux.core.config import Config
from gpumux.simulate.faults import Faults
from gpumux.simulate.report import summarize
from gpumux.simulate.workloads import Arrival
from tests.support.sim import (
    EVICTIONS,
    FAST,
    POLICIES,
    light_load,
    make_config,
    run_checked,
)

pytestmark = pytest.mark.unit


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Config, list[Arrival], float, Faults]:
    n = draw(st.integers(2, 4))
    gpus = draw(st.integers(1, 2))
    utils = draw(st.lists(st.sampled_from([0.3, 0.45, 0.9]), min_size=n, max_size=n))
    evictions = draw(st.lists(st.sampled_from(EVICTIONS), min_size=n, max_size=n))
    config = make_config(draw(st.sampled_from(POLICIES)), utils, evictions, gpus)
    arrivals = draw(
        st.lists(
            st.builds(
                Arrival,
                t=st.floats(0, 120, allow_nan=False),
                model=st.sampled_from([f"m{i}" for i in range(n)] + ["unknown"]),
                prompt_tokens=st.integers(0, 500),
                output_tokens=st.integers(1, 300),
                cancel_after=st.none() | st.floats(0, 30, allow_nan=False),
            ),
            max_size=40,
        )
    )
    crashes = draw(
        st.lists(
            st.tuples(st.floats(0, 150, allow_nan=False), st.sampled_from(list(config.models))),
            max_size=3,
        )
    )
    failing = draw(st.frozensets(st.integers(0, 30), max_size=6))
    switch_secs = draw(st.sampled_from([0.0, 0.5, 2.0, 10.0]))
    return config, sorted(arrivals, key=lambda a: a.t), switch_secs, Faults(failing, tuple(crashes))


@FAST
@given(scenarios())
def test_invariants_hold_under_load_disconnects_and_failures(
    scenario: tuple[Config, list[Arrival], float, Faults],
) -> None:
    config, arrivals, switch_secs, faults = scenario
    sim, checker, releases = run_checked(config, arrivals, switch_secs, faults)
    records = sim.record.requests
    assert len(records) == len(arrivals)
    for ticket, record in records.items():
        answered = checker.outcomes[ticket]
        if record.outcome == "cancelled":  # the client left while queued: no answer owed
            assert answered == 0
        else:
            assert answered == 1, record
        expected = 1 if ticket in checker.granted else 0
        assert releases[ticket] == expected, record
    assert not sim.core.queues.tickets
    assert all(not s.queue and not s.leases for s in sim.core.models.slots.values())
    outcomes = Counter(r.outcome for r in records.values())
    event(f"rejected: {bool(outcomes['rejected'])}, cancelled: {bool(outcomes['cancelled'])}")
    event(f"restarts: {sum(s.restarts for s in sim.core.models.slots.values()) > 0}")
    event(f"standing grants taken: {checker.taken > 0}")


def test_requests_to_a_ready_model_take_standing_grants_and_are_all_released() -> None:
    """Not vacuous: after the cold start, one model's requests take grants standing for
    them (no `Submit`), each checked by the observer, and the core hears of every release."""
    config = make_config("time_slice", [0.45, 0.45], ["offload+keep_running"] * 2, 1)
    arrivals = [
        Arrival(t=float(t), model="m0", prompt_tokens=10, output_tokens=20) for t in range(20)
    ]
    sim, checker, releases = run_checked(config, arrivals, 1.0, Faults())
    assert checker.taken == len(arrivals) - 1  # all but the one that cold-started it
    assert sum(releases.values()) == len(arrivals)
    assert all(r.outcome == "granted" and r.completed for r in sim.record.requests.values())
    assert not sim.core.models.slots["m0"].leases


@FAST
@given(light_load())
def test_wait_bound_holds_below_capacity(scenario: tuple[Config, list[Arrival], float]) -> None:
    config, arrivals, switch_secs = scenario
    sim, _, _ = run_checked(config, arrivals, switch_secs, Faults())
    summary = summarize(sim.record)
    assert summary["over_bound"] == 0, [
        (r.model, r.arrived_at, r.wait, r.switch_secs)
        for r in sim.record.requests.values()
        if r.wait is not None and r.wait > config.policy.max_wait_secs + r.switch_secs
    ]
    assert summary["completed"] == len(arrivals)
