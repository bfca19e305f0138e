"""Idle TTLs in virtual time: `simulate` runs the core's TTL deadline like any other, so a
switch to a cold model finds the idle victim already gone (no eviction on its path)."""

from __future__ import annotations

from typing import Any

import pytest

from gpumux.core.config import Config
from gpumux.simulate.engine import Simulation
from gpumux.simulate.switch_model import SwitchModel
from gpumux.simulate.workloads import Arrival

pytestmark = pytest.mark.unit


def config(ttl_secs: float | None) -> Config:
    model: dict[str, Any] = {"extra_args": ["--gpu-memory-utilization", "0.9"]}
    return Config.model_validate(
        {
            "models": {
                "a": {"model_path": "m/a", "port": 8101, **model},
                "b": {"model_path": "m/b", "port": 8102, **model},
            },
            "gpu": {"probe": "fake", "fake_capacity_gib": [80]},
            "policy": {"min_active_secs": 0, "ttl_secs": ttl_secs},
        }
    )


def run(ttl_secs: float | None) -> Simulation:
    arrivals = [Arrival(0.0, "a", 100, 50), Arrival(3600.0, "b", 100, 50)]
    sim = Simulation(config(ttl_secs), arrivals, SwitchModel())
    sim.run()
    return sim


def test_the_ttl_runs_in_virtual_time_and_takes_the_eviction_off_the_switch() -> None:
    without, with_ttl = run(None), run(300.0)
    [to_b_without] = [s for s in without.record.switches if s.target == "b"]
    [to_b_with] = [s for s in with_ttl.record.switches if s.target == "b"]
    assert to_b_without.victims == ("a",)
    assert to_b_with.victims == ()  # a's TTL evicted it at t≈300, an hour before
    assert to_b_with.secs < to_b_without.secs
    wait_with = next(r.wait for r in with_ttl.record.requests.values() if r.model == "b")
    wait_without = next(r.wait for r in without.record.requests.values() if r.model == "b")
    assert wait_with is not None
    assert wait_without is not None
    assert wait_with < wait_without
