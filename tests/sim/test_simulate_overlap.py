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

pytestmark = pytest.mark.unit


def config(*, overlap: bool) -> Config:
    return Config.model_validate(
        {
            "models": {
                alias: {
                    "model_path": f"m/{alias}",
                    "port": 8100 + i,
                    "extra_args": ["--gpu-memory-utilization", "0.9"],
                    # Two steps: the level-1 sleep frees the GPU, the suspend follows.
                    "eviction": {"weights": "offload", "process": "cuda_suspend"},
                }
                for i, alias in enumerate("ab")
            },
            "policy": {
                "min_active_secs": 0,
                "coalesce_window_ms": 0,
                "overlap": overlap,
                "evict_ahead": False,
            },
            "gpu": {"probe": "fake", "fake_capacity_gib": [80]},
        }
    )


def granted_at(cfg: Config) -> dict[str, float]:
    granted: dict[str, float] = {}

    def observe(_core: SchedulerCore, now: float, _in: Input, commands: list[Command]) -> None:
        for command in commands:
            if isinstance(command, Grant):
                granted.setdefault(command.model, now)

    arrivals = [Arrival(0, "a", 0, 5), Arrival(30, "b", 0, 5)]
    Simulation(cfg, arrivals, SwitchModel(), observer=observe).run()
    return granted


def test_the_next_wake_starts_when_the_victims_sleep_is_done_not_its_suspend() -> None:
    with_overlap = granted_at(config(overlap=True))
    without = granted_at(config(overlap=False))
    assert with_overlap["a"] == without["a"]
    # `b` waits for `a`'s sleep either way; with overlap not for `a`'s suspend as well.
    assert without["b"] - with_overlap["b"] == pytest.approx(STEP_SECS[Step.CUDA_SUSPEND])
    assert with_overlap["b"] > 30 + STEP_SECS[Step.SLEEP_OFFLOAD]
