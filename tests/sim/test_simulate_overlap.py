"""`simulate` overlaps as the daemon does: a victim whose first eviction step freed its GPU
memory lets the next wake start while the rest of its eviction runs (`policy.overlap`)."""

from __future__ import annotations

import pytest

from gpumux.core.config import Config
from gpumux.core.eviction import Step
from gpumux.scheduler.inputs import Input
from gpumux.scheduler.messages import Command, Grant
from gpumux.scheduler.state.core import SchedulerCore
from gpumux.simulate.engine import Simulation
from gpumux.simulate.switch_model import STEP_SECS, SwitchModel
from gpumux.simulate.workloads import Arrival
from tests.support.sim import make_config

pytestmark = pytest.mark.unit


def config(*, overlap: bool) -> Config:
    # Two models that cannot be awake together; two steps to each eviction: the level-1
    # sleep frees the GPU, the suspend follows.
    return make_config(
        "time_slice",
        [0.9, 0.9],
        ["offload+cuda_suspend"] * 2,
        gpus=1,
        min_active_secs=0,
        coalesce_window_ms=0,
        overlap=overlap,
        evict_ahead=False,
    )


def granted_at(cfg: Config) -> dict[str, float]:
    granted: dict[str, float] = {}

    def observe(_core: SchedulerCore, now: float, _in: Input, commands: list[Command]) -> None:
        for command in commands:
            if isinstance(command, Grant):
                granted.setdefault(command.model, now)

    arrivals = [Arrival(0, "m0", 0, 5), Arrival(30, "m1", 0, 5)]
    Simulation(cfg, arrivals, SwitchModel(), observer=observe).run()
    return granted


def test_the_next_wake_starts_when_the_victims_sleep_is_done_not_its_suspend() -> None:
    with_overlap = granted_at(config(overlap=True))
    without = granted_at(config(overlap=False))
    assert with_overlap["m0"] == without["m0"]
    # m1 waits for m0's sleep either way; with overlap not for m0's suspend as well.
    assert without["m1"] - with_overlap["m1"] == pytest.approx(STEP_SECS[Step.CUDA_SUSPEND])
    assert with_overlap["m1"] > 30 + STEP_SECS[Step.SLEEP_OFFLOAD]
