"""Properties of victim choice, eviction ahead of need and `auto` (hypothesis, virtual time).

The real `SchedulerCore` and policies run in the simulator's event loop:
- memory: no GPU is ever over its capacity, and the host RAM the backends pin (level-1
  sleepers, suspended models, and awake processes keeping a level-1 backup) never
  exceeds the host, with the budget fed readings as the daemon's poller would;
- pins: a pinned model is never chosen as a victim (never drains or evicts);
- no thrash: under stationary load, no model evicted ahead of need is woken again within
  its own round trip (its eviction plus its wake).
The wait bound under capacity is `test_scheduler_properties.py`'s (eviction ahead of
need is on there too: it is the default).
"""

from __future__ import annotations

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from gpumux.core.config import Config
from gpumux.simulate.engine import Simulation
from gpumux.simulate.switch_model import SwitchModel
from gpumux.simulate.workloads import Arrival
from tests.support.sim import FAST, POLICIES, Checker
from tests.support.switching import (
    GIB,
    AheadWatch,
    HostWatch,
    Observers,
    PinWatch,
    stationary_load,
    switching_config,
)

pytestmark = pytest.mark.unit
EVICTIONS = ("offload+keep_running", "discard+keep_running", "retain+cuda_suspend", "auto")


def arrivals_for(n: int) -> st.SearchStrategy[list[Arrival]]:
    one = st.builds(
        Arrival,
        t=st.floats(0, 200, allow_nan=False),
        model=st.sampled_from([f"m{i}" for i in range(n)]),
        prompt_tokens=st.integers(0, 300),
        output_tokens=st.integers(1, 200),
    )
    return st.lists(one, max_size=50).map(lambda xs: sorted(xs, key=lambda a: a.t))


@st.composite
def memory_scenarios(draw: st.DrawFn) -> tuple[Config, list[Arrival], float, int]:
    n = draw(st.integers(2, 4))
    gpus = draw(st.integers(1, 2))
    utils = draw(st.lists(st.sampled_from([0.3, 0.45, 0.9]), min_size=n, max_size=n))
    evictions = draw(st.lists(st.sampled_from(EVICTIONS), min_size=n, max_size=n))
    host_gib = draw(st.sampled_from([16, 30, 60]))  # 12 GiB per pin: one to four fit
    config = switching_config(
        draw(st.sampled_from(POLICIES)),
        utils,
        evictions,
        gpus=gpus,
        host={"reserve_gib": 2},
    )
    return config, draw(arrivals_for(n)), draw(st.sampled_from([0.5, 2.0, 10.0])), host_gib


@FAST
@given(memory_scenarios())
def test_gpu_and_host_memory_are_never_over_budget(
    scenario: tuple[Config, list[Arrival], float, int],
) -> None:
    config, arrivals, switch_secs, host_gib = scenario
    sim = Simulation(config, arrivals, SwitchModel(switch_secs))
    host = HostWatch(sim, host_gib * GIB)
    checker = Checker(sim.core)
    sim._observer, sim._unasked = Observers(checker, host), checker
    sim.run()
    assert host.peak <= host.total
    event(f"pins at the peak: {host.peak // (12 * GIB)}")
    notes = [r for r in sim.record.requests.values() if r.outcome == "granted"]
    event(f"served: {bool(notes)}")


@st.composite
def pinned_scenarios(draw: st.DrawFn) -> tuple[Config, list[Arrival], float]:
    n = draw(st.integers(2, 4))
    gpus = draw(st.integers(1, 2))
    utils = draw(st.lists(st.sampled_from([0.3, 0.45]), min_size=n, max_size=n))
    pinned = frozenset(draw(st.sets(st.integers(0, gpus - 1), min_size=1)))  # one per GPU
    evictions = draw(st.lists(st.sampled_from(EVICTIONS), min_size=n, max_size=n))
    config = switching_config(
        draw(st.sampled_from(POLICIES)), utils, evictions, gpus=gpus, pinned=pinned
    )
    return config, draw(arrivals_for(n)), draw(st.sampled_from([0.5, 2.0, 10.0]))


@FAST
@given(pinned_scenarios())
def test_pinned_models_are_never_victims(scenario: tuple[Config, list[Arrival], float]) -> None:
    config, arrivals, switch_secs = scenario
    sim = Simulation(config, arrivals, SwitchModel(switch_secs))
    pins = PinWatch({a for a, m in config.models.items() if m.pinned})
    checker = Checker(sim.core)
    sim._observer, sim._unasked = Observers(checker, pins), checker
    sim.run()
    event(f"a pinned model served: {bool(pins.seen_ready)}")


@FAST
@given(
    stationary_load(),
    st.sampled_from(POLICIES),
    st.sampled_from([0.5, 2.0, 5.0, 10.0]),
)
def test_no_model_evicted_ahead_is_woken_within_its_round_trip(
    load: tuple[list[Arrival], float], policy: str, switch_secs: float
) -> None:
    arrivals, _ = load
    n = len({a.model for a in arrivals})
    config = switching_config(policy, [0.9] * n, ["offload+keep_running"] * n)
    sim = Simulation(config, arrivals, SwitchModel(switch_secs))
    ahead = AheadWatch()
    checker = Checker(sim.core)
    sim._observer, sim._unasked = Observers(checker, ahead), checker
    sim.run()
    # With `--switch-cost`, a model's eviction and wake add up to exactly switch_secs.
    for model, at in ahead.ahead:
        woken = ahead.next_wake(model, at)
        assert woken is None or woken - at >= switch_secs, (model, at, woken)
    event(f"evicted ahead: {bool(ahead.ahead)}")
