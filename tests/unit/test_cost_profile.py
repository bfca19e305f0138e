"""Cost profiles: the per-byte math, a process's first sleep, sizes, and bad files.

The step costs are exercised through the real `Orchestrator` over `SimEffects`, the way
the simulator charges them, so the first-sleep rule is tested where it lives (the
effects remember which simulated process has slept at level 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gpumux.core.config import GIB, Config, EvictionConfig
from gpumux.core.eviction import Step, evict_plan, wake_plan
from gpumux.core.states import ModelState
from gpumux.scheduler.messages import Operation, OpKind, OpOutcome
from gpumux.scheduler.orchestrator import Orchestrator
from gpumux.simulate.cost_profile import (
    H200_VM,
    CostProfile,
    ModelCosts,
    ProfileError,
    load_profile,
    profile_json,
)
from gpumux.simulate.effects import SimEffects, advance
from gpumux.simulate.profile_costs import ProfileCosts, model_bytes
from gpumux.simulate.switch_model import StepCosts, SwitchModel, step_costs

pytestmark = pytest.mark.unit
GB = 1e9


def config(util: float = 0.5, extra: list[str] | None = None, capacity: float = 140) -> Config:
    return Config.model_validate(
        {
            "models": {
                "m": {
                    "model_path": "test/m",
                    "port": 8100,
                    "extra_args": ["--gpu-memory-utilization", str(util), *(extra or [])],
                }
            },
            "gpu": {"probe": "fake", "fake_capacity_gib": [capacity], "sleeping_residual_gib": 1},
        }
    )


class World:
    """One simulated model's process under some step costs, driven op by op."""

    def __init__(self, costs: StepCosts) -> None:
        self.effects = SimEffects(costs, lambda _model: None)
        self.now = 0.0
        self._orchestrator = Orchestrator(self.effects, lambda: self.now)
        self._ids = 0

    def run(self, kind: OpKind, steps: tuple[Step, ...], eviction: str) -> float:
        """Seconds the operation took."""
        self._ids += 1
        op = Operation(self._ids, "m", kind, steps, EvictionConfig.parse(eviction))
        self.effects.begin(op, 0)
        run = self._orchestrator.run(op, lambda _state: None)
        started = self.now
        while not isinstance(result := advance(run), OpOutcome):
            self.now += result
        return self.now - started

    def evict(self, eviction: str) -> float:
        return self.run(OpKind.EVICT, evict_plan(EvictionConfig.parse(eviction))[0], eviction)

    def wake(self, eviction: str, from_state: ModelState) -> float:
        weights = EvictionConfig.parse(eviction).weights
        return self.run(OpKind.WAKE, wake_plan(weights, from_state, warmup=False), eviction)


def test_only_a_process_s_first_level_1_sleep_pays_for_pinning() -> None:
    profile = H200_VM.model_copy(update={"models": {"m": ModelCosts(weights_gib=30)}})
    world = World(ProfileCosts(profile, config()))
    weights_gb = 30 * GIB / GB
    copy = weights_gb / profile.pinned_copy_gbps + profile.call_secs
    pin = weights_gb / profile.pin_gbps

    world.wake("retain+stop", ModelState.STOPPED)  # a fresh process
    first = world.evict("offload+keep_running")
    world.wake("offload+keep_running", ModelState.SLEEPING)
    later = world.evict("offload+keep_running")

    assert first == pytest.approx(pin + copy)
    assert later == pytest.approx(copy)
    assert 11 < first < 14  # the 30.7 GB first sleep took 11-12 s plus the copy


def test_a_restart_makes_a_new_process_that_pays_for_pinning_again() -> None:
    world = World(ProfileCosts(H200_VM, config(extra=["--mock-model-gib", "10"])))
    world.wake("retain+stop", ModelState.STOPPED)
    first = world.evict("offload+keep_running")
    world.wake("offload+keep_running", ModelState.SLEEPING)
    world.evict("retain+stop")
    world.wake("retain+stop", ModelState.STOPPED)
    assert world.evict("offload+keep_running") == pytest.approx(first)


def test_a_model_found_asleep_at_level_1_has_pinned_already() -> None:
    world = World(ProfileCosts(H200_VM, config(extra=["--mock-model-gib", "10"])))
    world.wake("offload+keep_running", ModelState.SLEEPING)
    copy = 10 * GIB / GB / H200_VM.pinned_copy_gbps + H200_VM.call_secs
    assert world.evict("offload+keep_running") == pytest.approx(copy)


def test_suspend_and_resume_scale_with_the_footprint_util_times_card() -> None:
    small = World(ProfileCosts(H200_VM, config(util=0.25)))
    large = World(ProfileCosts(H200_VM, config(util=0.5)))
    suspend = [w.evict("retain+cuda_suspend") for w in (small, large)]
    resume = [w.wake("retain+cuda_suspend", ModelState.SUSPENDED) for w in (small, large)]
    assert suspend[1] == pytest.approx(2 * suspend[0])
    assert resume[1] == pytest.approx(2 * resume[0])
    footprint_gb = 0.5 * 140 * GIB / GB
    assert suspend[1] == pytest.approx(footprint_gb / H200_VM.cuda_suspend_gbps)
    assert resume[1] == pytest.approx(footprint_gb / H200_VM.cuda_resume_gbps)


def test_sizes_come_from_the_profile_then_the_mock_flag_then_a_share() -> None:
    assert model_bytes(H200_VM, config(util=0.5))["m"].weights == pytest.approx(
        0.75 * 0.5 * 140 * GIB
    )
    flagged = model_bytes(H200_VM, config(extra=["--mock-model-gib", "4"]))["m"]
    assert flagged.weights == pytest.approx(4 * GIB)
    given = H200_VM.model_copy(
        update={"models": {"m": ModelCosts(weights_gib=7, footprint_gib=20)}}
    )
    sized = model_bytes(given, config(extra=["--mock-model-gib", "4"]))["m"]
    assert (sized.weights, sized.footprint) == (7 * GIB, 20 * GIB)


def test_level_2_reload_reads_from_disk_first_then_from_the_page_cache() -> None:
    world = World(ProfileCosts(H200_VM, config(extra=["--mock-model-gib", "16"])))
    cold = world.wake("discard+keep_running", ModelState.SLEEPING)
    warm = world.wake("discard+keep_running", ModelState.SLEEPING)
    gb = 16 * GIB / GB
    calls = 4 * H200_VM.call_secs
    assert cold == pytest.approx(calls + gb / H200_VM.disk_read_gbps)
    assert warm == pytest.approx(calls + gb / H200_VM.page_cache_read_gbps)


def test_a_page_cache_too_small_for_the_files_always_reads_from_disk() -> None:
    profile = H200_VM.model_copy(update={"page_cache_gib": 8})
    world = World(ProfileCosts(profile, config(extra=["--mock-model-gib", "16"])))
    first = world.wake("discard+keep_running", ModelState.SLEEPING)
    assert world.wake("discard+keep_running", ModelState.SLEEPING) == pytest.approx(first)


def test_measured_seconds_win_and_are_spread_over_the_steps() -> None:
    seconds = {"evict|offload+keep_running": 9.0, "wake|offload+keep_running": 0.75}
    profile = H200_VM.model_copy(update={"models": {"m": ModelCosts(seconds=seconds)}})
    world = World(ProfileCosts(profile, config()))
    assert world.evict("offload+keep_running") == pytest.approx(9.0)
    assert world.wake("offload+keep_running", ModelState.SLEEPING) == pytest.approx(0.75)
    # Not measured: the rates.
    assert world.evict("retain+stop") == pytest.approx(H200_VM.stop_secs)


def test_step_costs_binds_a_profile_per_simulation_and_keeps_a_switch_model() -> None:
    model = SwitchModel(10.0)
    assert step_costs(model, config()) is model
    first, second = (step_costs(H200_VM, config()) for _ in range(2))
    assert isinstance(first, ProfileCosts)
    assert first is not second  # a fresh page cache for each simulation


def write(tmp_path: Path, raw: Any) -> str:
    path = tmp_path / "profile.json"
    path.write_text(raw if isinstance(raw, str) else json.dumps(raw))
    return str(path)


def test_a_json_profile_states_only_what_differs_from_h200_vm(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, {"name": "mine", "disk_read_gbps": 0.5}))
    assert profile.disk_read_gbps == 0.5
    assert profile.pin_gbps == H200_VM.pin_gbps
    assert load_profile(write(tmp_path, profile_json(H200_VM))) == H200_VM


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("{not json", "not valid JSON"),
        ([1, 2], "not a cost profile"),
        ({"pin_gbps": 0}, "pin_gbps"),
        ({"pin_gbp": 2.0}, "pin_gbp"),
        ({"version": 2}, "version"),
        ({"models": {"m": {"seconds": {"sleep|offload+keep_running": 1}}}}, "sleep|offload"),
        ({"models": {"m": {"seconds": {"evict|offload+nap": 1}}}}, "evict|offload+nap"),
        ({"models": {"m": {"seconds": {"evict|offload+keep_running": -1}}}}, "non-negative"),
    ],
)
def test_a_bad_profile_file_says_what_is_wrong(tmp_path: Path, raw: Any, says: str) -> None:
    path = write(tmp_path, raw)
    with pytest.raises(ProfileError, match=r"profile\.json") as error:
        load_profile(path)
    assert says in str(error.value)


def test_an_unknown_name_or_missing_file_is_a_profile_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="neither a built-in profile"):
        load_profile("h100-bare")
    with pytest.raises(ProfileError, match="cannot be read"):
        load_profile(str(tmp_path / "absent.json"))


def test_the_builtin_profile_holds_the_h200_rates() -> None:
    assert isinstance(H200_VM, CostProfile)
    assert 2.0 <= H200_VM.pin_gbps <= 2.7
    assert 54 <= H200_VM.pinned_copy_gbps <= 55.5
    assert 4.5 <= H200_VM.page_cache_read_gbps <= 7.7
    assert 1.4 <= H200_VM.disk_read_gbps <= 1.9
    assert 2.0 <= H200_VM.cuda_suspend_gbps <= 2.4
    assert H200_VM.cuda_resume_gbps == 6.5
