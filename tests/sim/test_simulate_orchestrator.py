"""`simulate` runs the real orchestrator: its steps, fallbacks and timings in virtual time.

One or two models and a request or two, so every virtual second can be accounted for:
each step costs `STEP_SECS`, a kill of a live tree costs a stop, and an injected failure
goes through the orchestrator's own fallback (a failed wake kills the tree and
cold-starts once; a failed eviction step kills the tree), reported to the core as the
async runner reports it.
"""

from __future__ import annotations

import pytest

from gpumux.core.config import Config
from gpumux.core.eviction import Step
from gpumux.core.states import ModelState
from gpumux.scheduler.inputs import Input
from gpumux.scheduler.messages import Command, Grant, Restarted, StateChanged
from gpumux.scheduler.state.core import SchedulerCore
from gpumux.simulate.engine import Simulation
from gpumux.simulate.faults import Faults
from gpumux.simulate.switch_model import STEP_SECS, SwitchModel
from gpumux.simulate.workloads import Arrival

pytestmark = pytest.mark.unit
M = ModelState


def config(util: float) -> Config:
    return Config.model_validate(
        {
            "models": {
                alias: {
                    "model_path": f"m/{alias}",
                    "port": 8100 + i,
                    "extra_args": ["--gpu-memory-utilization", str(util)],
                    "eviction": {"weights": "offload", "process": "keep_running"},
                }
                for i, alias in enumerate("ab")
            },
            "policy": {"min_active_secs": 0, "coalesce_window_ms": 0},
            "gpu": {"probe": "fake", "fake_capacity_gib": [80]},
        }
    )


class Log:
    """The simulation's observer: grants, restarts and state changes, with their times."""

    def __init__(self) -> None:
        self.granted: dict[str, float] = {}
        self.restarts: list[tuple[str, str]] = []
        self.states: dict[str, list[ModelState]] = {}

    def __call__(
        self, _core: SchedulerCore, now: float, _input: Input, commands: list[Command]
    ) -> None:
        for command in commands:
            if isinstance(command, Grant):
                self.granted.setdefault(command.model, now)
            elif isinstance(command, Restarted):
                self.restarts.append((command.model, command.reason))
            elif isinstance(command, StateChanged):
                self.states.setdefault(command.model, [command.before]).append(command.after)


def simulate(util: float, arrivals: list[Arrival], failing: set[int]) -> Log:
    log = Log()
    faults = Faults(frozenset(failing))
    Simulation(config(util), arrivals, SwitchModel(), faults=faults, observer=log).run()
    return log


def request(t: float, model: str) -> Arrival:
    return Arrival(t, model, prompt_tokens=0, output_tokens=5)


def test_a_wake_takes_the_time_of_its_steps() -> None:
    log = simulate(0.9, [request(0, "a")], failing=set())
    assert log.granted == {"a": STEP_SECS[Step.WAKE_ALL]}
    assert log.states["a"] == [M.SLEEPING, M.WAKING, M.READY]


def test_a_failed_wake_kills_the_tree_and_cold_starts_in_virtual_time() -> None:
    # Both fit: operation 0 wakes `a`, operation 1 (odd: only its first step fails) `b`.
    log = simulate(0.45, [request(0, "a"), request(5, "b")], failing={1})
    secs = STEP_SECS[Step.WAKE_ALL] + STEP_SECS[Step.STOP] + STEP_SECS[Step.COLD_START]
    assert log.granted["b"] == pytest.approx(5 + secs)
    assert log.states["b"] == [M.SLEEPING, M.WAKING, M.STARTING, M.READY]
    assert log.restarts == [("b", "wake_failed")]


def test_a_wake_whose_cold_start_fails_too_fails_then_starts_after_the_backoff() -> None:
    log = simulate(0.9, [request(0, "a")], failing={0})  # even: the cold start fails too
    failed = STEP_SECS[Step.WAKE_ALL] + STEP_SECS[Step.STOP] + STEP_SECS[Step.COLD_START]
    backoff = config(0.9).supervision.restart_backoff_secs
    assert log.granted["a"] == pytest.approx(failed + backoff + STEP_SECS[Step.COLD_START])
    assert log.states["a"] == [M.SLEEPING, M.WAKING, M.STARTING, M.STOPPED, M.STARTING, M.READY]
    assert log.restarts == [("a", "start_failed")]


def test_a_failed_eviction_step_kills_the_tree_and_the_switch_goes_on() -> None:
    # One at a time: operation 0 wakes `a`, 1 evicts it (and fails), 2 wakes `b`.
    log = simulate(0.9, [request(0, "a"), request(10, "b")], failing={1})
    evict = STEP_SECS[Step.SLEEP_OFFLOAD] + STEP_SECS[Step.STOP]
    assert log.granted["b"] == pytest.approx(10 + evict + STEP_SECS[Step.WAKE_ALL])
    assert log.states["a"][-3:] == [M.DRAINING, M.EVICTING, M.STOPPED]
