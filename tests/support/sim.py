"""Shared pieces of the scheduler's property tests: configs, a checking observer, loads.

Owns: `make_config` (n models over g fake GPUs), `Checker` (the observer that asserts the
memory, grant and outcome invariants at every step), `run_checked`, the `light_load`
strategy (load under capacity, where the wait bound must hold) and the `FAST` settings.
Does not: assert a property itself (the tests in tests/sim do).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from hypothesis import HealthCheck, settings
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
from gpumux.simulate.switch_model import SwitchModel
from gpumux.simulate.workloads import Arrival

POLICIES = ("fifo", "cost_aware", "time_slice")
EVICTIONS = ("offload+keep_running", "discard+keep_running", "retain+stop", "discard+cuda_suspend")
FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_config(
    policy: str,
    utils: list[float],
    evictions: list[str],
    gpus: int,
    *,
    max_queue: int = 8,
    **policy_fields: Any,
) -> Config:
    """Models `m0…` at `utils` with `evictions` ("weights+process"), spread over `gpus`
    80 GiB cards; `policy_fields` override the policy section's test defaults."""
    models: dict[str, Any] = {}
    for i, (util, eviction) in enumerate(zip(utils, evictions, strict=True)):
        weights, process = eviction.split("+")
        models[f"m{i}"] = {
            "model_path": f"test/m{i}",
            "port": 8100 + i,
            "gpus": [i % gpus],
            "extra_args": ["--gpu-memory-utilization", str(util)],
            "eviction": {"weights": weights, "process": process},
            "max_queue": max_queue,
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
                **policy_fields,
            },
            "supervision": {"restart_backoff_secs": 1, "failed_retry_secs": 30},
        }
    )


class Checker:
    """The observer: checks every step, and counts outcomes for the end of the run.

    Also the run's `Unasked` observer: a request that takes a standing grant is granted
    then, by the model as it stands (READY, the same process); its release may reach the
    core later, with its next input. Both count under the request's own ticket.
    """

    def __init__(self, core: SchedulerCore) -> None:
        self.states = {alias: slot.state for alias, slot in core.models.slots.items()}
        self.outcomes: Counter[int] = Counter()
        self.granted: set[int] = set()
        self.releases: Counter[int] = Counter()
        self.steps = 0
        self.taken = 0
        self._request_of: dict[int, int] = {}  # standing grant → the request that took it

    def took(self, core: SchedulerCore, now: float, ticket: int, grant: Grant) -> None:
        slot = core.models.slots[grant.model]
        assert slot.state is ModelState.READY, (now, grant, slot.state)
        assert not slot.queue, (now, grant)
        assert self.states[grant.model] is ModelState.READY
        assert grant.pid == slot.pid, (grant, slot.pid)
        assert grant.port == slot.config.port, grant
        self.outcomes[ticket] += 1
        self.granted.add(ticket)
        self._request_of[grant.ticket] = ticket
        self.taken += 1

    def handed(self, core: SchedulerCore, releases: Sequence[tuple[int, float]]) -> None:
        for lease, _ in releases:
            self.releases[self._request_of.get(lease, lease)] += 1

    def __call__(
        self, core: SchedulerCore, now: float, message: Input, commands: list[Command]
    ) -> None:
        self.steps += 1
        if isinstance(message, Release):
            self.releases[self._request_of.get(message.ticket, message.ticket)] += 1
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
    sim._unasked = checker
    sim.run()
    return sim, checker, checker.releases


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
