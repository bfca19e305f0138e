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
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gpumux.core.config import Config
from gpumux.core.placement import usage
from gpumux.core.states import ModelState
from gpumux.scheduler.inputs import Input, Release
from gpumux.scheduler.messages import Command, Grant, Reject, StateChanged
from gpumux.scheduler.state.core import SchedulerCore
from gpumux.simulate.backend import SEQ_TPS
from gpumux.simulate.engine import Simulation
from gpumux.simulate.faults import Faults
from gpumux.simulate.report import summarize
from gpumux.simulate.switch_model import SwitchModel
from gpumux.simulate.workloads import Arrival

pytestmark = pytest.mark.unit
POLICIES = ("fifo", "cost_aware", "time_slice")
EVICTIONS = ("offload+keep_running", "discard+keep_running", "retain+stop", "discard+cuda_suspend")
FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_config(policy: str, utils: list[float], evictions: list[str], gpus: int) -> Config:
    models: dict[str, Any] = {}
    for i, (util, eviction) in enumerate(zip(utils, evictions, strict=True)):
        weights, process = eviction.split("+")
        models[f"m{i}"] = {
            "model_path": f"test/m{i}",
            "port": 8100 + i,
            "gpus": [i % gpus],
            "extra_args": ["--gpu-memory-utilization", str(util)],
            "eviction": {"weights": weights, "process": process},
            "max_queue": 8,
        }
    return Config.model_validate(
        {
            "models": models,
            "checkpoint": {},
            "gpu": {"probe": "fake", "fake_capacity_gib": [80] * gpus},
            "policy": {
                "policy_type": policy,
                "min_active_secs": 1,
                "request_timeout_secs": 120,
                "drain_timeout_secs": 20,
            },
            "supervision": {"restart_backoff_secs": 1, "failed_retry_secs": 30},
        }
    )


class Checker:
    """The observer: checks every step, and counts outcomes for the end of the run."""

    def __init__(self, core: SchedulerCore) -> None:
        self.states = {alias: slot.state for alias, slot in core.models.slots.items()}
        self.outcomes: Counter[int] = Counter()
        self.granted: set[int] = set()
        self.releases: Counter[int] = Counter()
        self.steps = 0

    def __call__(
        self, core: SchedulerCore, now: float, message: Input, commands: list[Command]
    ) -> None:
        self.steps += 1
        if isinstance(message, Release):
            self.releases[message.ticket] += 1
        for command in commands:
            if isinstance(command, StateChanged):
                assert self.states[command.model] is command.before
                self.states[command.model] = command.after
            elif isinstance(command, Grant):
                assert self.states[command.model] is ModelState.READY, command
                self.outcomes[command.ticket] += 1
                self.granted.add(command.ticket)
            elif isinstance(command, Reject):
                self.outcomes[command.ticket] += 1
        slots = core.models.slots
        assert self.states == {alias: slot.state for alias, slot in slots.items()}
        capacity = core.models.capacity
        tenants = [s.tenant(min_active_secs=0, wake_cost_secs=0) for s in slots.values()]
        used = usage(tenants, capacity, after_evictions=False)
        assert all(used[gpu] <= capacity[gpu] for gpu in capacity), (now, used, capacity)


def run_checked(
    config: Config, arrivals: list[Arrival], switch_secs: float, faults: Faults
) -> tuple[Simulation, Checker, Counter[int]]:
    sim = Simulation(config, arrivals, SwitchModel(switch_secs), faults=faults)
    checker = Checker(sim.core)
    sim._observer = checker
    sim.run()
    return sim, checker, checker.releases


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


@st.composite
def light_load(draw: st.DrawFn) -> tuple[Config, list[Arrival], float]:
    """Load under capacity: any model with demand is reached well within the bound."""
    n = draw(st.integers(2, 3))
    config = make_config(
        draw(st.sampled_from(POLICIES)), [0.9] * n, ["offload+keep_running"] * n, 1
    )
    config = config.model_copy(
        update={
            "models": {a: m.model_copy(update={"max_queue": 256}) for a, m in config.models.items()}
        }
    )
    switch_secs = draw(st.sampled_from([0.5, 1.0, 2.0]))
    max_output = 100
    service = max_output / SEQ_TPS  # a lone request; the batches here stay small
    visit = max(config.policy.min_active_secs, config.policy.min_quantum_ms / 1000)
    assert (n - 1) * (switch_secs + visit + service) + service <= config.policy.max_wait_secs
    arrivals = draw(
        st.lists(
            st.builds(
                Arrival,
                t=st.floats(0, 200, allow_nan=False),
                model=st.sampled_from(list(config.models)),
                prompt_tokens=st.integers(0, 200),
                output_tokens=st.integers(1, max_output - 20),
            ),
            max_size=60,
        )
    )
    return config, sorted(arrivals, key=lambda a: a.t), switch_secs


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
