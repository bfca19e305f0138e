"""The lower bound: hand-solved instances, the relaxation's parts, and the percentile rule.

Each hand case states the optimum worked out on paper next to it; where a real policy
reaches that optimum in the simulator, the bound must equal what the policy got.
"""

from __future__ import annotations

from typing import Any

import pytest

from gpumux.core.config import Config, EvictionConfig
from gpumux.policy.registry import POLICIES
from gpumux.simulate.bound import (
    ALL_LEVELS,
    _p99_bound,
    compute_bound,
    exclusive_groups,
    least_costs,
    levels,
    reachable_levels,
)
from gpumux.simulate.engine import Simulation
from gpumux.simulate.exclusive import Costs, Request, min_max_wait
from gpumux.simulate.report import summarize
from gpumux.simulate.scenario import for_policy
from gpumux.simulate.switch_model import SwitchModel
from gpumux.simulate.workloads import Arrival

pytestmark = pytest.mark.unit
TWO = {"a": Costs(wake=3.0, free=2.0), "b": Costs(wake=3.0, free=2.0)}


def config(utils: list[float], **model: Any) -> Config:
    return Config.model_validate(
        {
            "models": {
                name: {
                    "model_path": f"test/{name}",
                    "port": 8100 + i,
                    "extra_args": ["--gpu-memory-utilization", str(util)],
                    "max_queue": 256,
                    **model,
                }
                for i, (name, util) in enumerate(zip("abc", utils, strict=False))
            },
            "gpu": {"probe": "fake", "fake_capacity_gib": [80]},
            "policy": {"eviction": {"weights": "offload", "process": "keep_running"}},
        }
    )


def requests(*pairs: tuple[float, str]) -> list[Request]:
    return [Request(t, m) for t, m in pairs]


@pytest.mark.parametrize(
    ("trace", "optimum"),
    [
        # One request at 0: nothing is awake at the start, so it waits for a wake.
        ([(0.0, "a")], 3.0),
        # Known in advance, a model can be woken before its request: no wait.
        ([(10.0, "a")], 0.0),
        # Two models wanted at 10: one is ready then, the other 2 + 3 s later.
        ([(10.0, "a"), (10.0, "b")], 5.0),
        # Far enough apart, both are ready in time (a ready at 3; leave at 10; b at 15).
        ([(10.0, "a"), (20.0, "b")], 0.0),
        # a@3, b@4, a@5: serve a@3 and leave → b at 8 (4), a back at 13 (a@5 waits 8);
        # stay for a@5 → b at 10 (waits 6); b first, ready at 4 → a at 9 (a@3 waits 6).
        ([(3.0, "a"), (4.0, "b"), (5.0, "a")], 6.0),
    ],
)
def test_the_exact_search_finds_the_optimum_worked_out_by_hand(
    trace: list[tuple[float, str]], optimum: float
) -> None:
    assert min_max_wait(requests(*trace), TWO, free_start=False) == pytest.approx(optimum)


def test_a_model_lets_go_when_its_requests_ran_or_the_drain_timeout_passed() -> None:
    # a@0 runs 20 s once granted at 3; b@0 comes after it: 3 + 20 + 2 + 3 = 28, or with a
    # 5 s drain timeout (the core aborts a then) 3 + 5 + 2 + 3 = 13; b first is as bad.
    trace = [Request(0.0, "a", 20.0), Request(0.0, "b", 20.0)]
    assert min_max_wait(trace, TWO, free_start=False, drain_secs=60) == pytest.approx(28.0)
    assert min_max_wait(trace, TWO, free_start=False, drain_secs=5) == pytest.approx(13.0)


def test_a_free_start_may_begin_with_the_right_model_ready() -> None:
    trace = requests((100.0, "a"), (100.0, "b"))
    assert min_max_wait(trace, TWO, free_start=True) == pytest.approx(5.0)
    assert min_max_wait(requests((100.0, "b")), TWO, free_start=True) == 0.0


def test_the_bound_equals_what_every_policy_gets_when_they_reach_the_optimum() -> None:
    # One request, cold: the wait is the wake, for every policy and for the bound.
    cfg = config([0.9, 0.9])
    arrivals = [Arrival(0.0, "a", 10, 10)]
    bound = compute_bound(cfg, arrivals, SwitchModel(10.0))
    assert bound.method == "exact"
    assert bound.p99_wait == pytest.approx(6.0)  # the wake's 60 % of the switch cost
    for policy in POLICIES:
        got = summarize(Simulation(for_policy(cfg, policy), arrivals, SwitchModel(10.0)).run())
        assert got["p99_wait"] == pytest.approx(bound.p99_wait), policy
        assert got["busy_fraction"] <= bound.busy_fraction + 1e-9, policy


def test_two_models_that_do_not_fit_together_pay_a_switch() -> None:
    # a and b at 0 on one card: a ready at 6, its request runs 11 tokens / 50 per s =
    # 0.22 s, then a's 4 s sleep and b's 6 s wake: b waits 16.22 s.
    cfg = config([0.9, 0.9])
    arrivals = [Arrival(0.0, "a", 10, 10), Arrival(0.0, "b", 10, 10)]
    bound = compute_bound(cfg, arrivals, SwitchModel(10.0))
    assert bound.p99_wait == pytest.approx(16.22)
    for policy in POLICIES:
        got = summarize(Simulation(for_policy(cfg, policy), arrivals, SwitchModel(10.0)).run())
        assert got["p99_wait"] >= bound.p99_wait - 1e-9, policy


def test_models_that_fit_together_only_pay_their_first_wake() -> None:
    cfg = config([0.45, 0.45])
    arrivals = [Arrival(0.0, "a", 10, 10), Arrival(0.0, "b", 10, 10)]
    assert compute_bound(cfg, arrivals, SwitchModel(10.0)).p99_wait == pytest.approx(6.0)
    assert exclusive_groups(cfg) == [(("a",), True), (("b",), True)]


def test_groups_link_models_that_cannot_share_a_card_pairwise() -> None:
    assert exclusive_groups(config([0.9, 0.9, 0.9])) == [(("a", "b", "c"), True)]
    # b and c fit together, a fits with neither: one group, not exclusive.
    assert exclusive_groups(config([0.7, 0.4, 0.5])) == [(("a", "b", "c"), False)]
    # Any two fit (only all three do not): no pair constrains another; dropping the
    # three-way limit keeps the bound valid, only weaker.
    assert exclusive_groups(config([0.45, 0.45, 0.45])) == [
        (("a",), True),
        (("b",), True),
        (("c",), True),
    ]


def test_a_wait_longer_than_the_request_timeout_counts_as_the_timeout() -> None:
    cfg = config([0.9, 0.9])
    cfg = cfg.model_copy(
        update={"policy": cfg.policy.model_copy(update={"request_timeout_secs": 5.0})}
    )
    arrivals = [Arrival(0.0, "a", 10, 10), Arrival(0.0, "b", 10, 10)]
    assert compute_bound(cfg, arrivals, SwitchModel(100.0)).p99_wait == 5.0


def test_p99_takes_the_n_minus_k_plus_1_th_largest_window_value() -> None:
    # 200 requests: p99 is the 198th smallest, so 3 requests must wait that long.
    assert _p99_bound([9.0, 7.0, 5.0, 1.0], 200) == 5.0
    assert _p99_bound([9.0, 7.0], 200) == 0.0  # two long waits fit in the top 1 %
    assert _p99_bound([4.0, 2.0], 50) == 4.0  # up to 100 requests p99 is the maximum


def test_the_cheapest_reachable_level_sets_the_costs() -> None:
    assert levels("auto") == ALL_LEVELS
    offload = EvictionConfig.parse("offload+keep_running")
    assert levels(offload) == (offload,)
    stop = {"weights": "retain", "process": "stop"}
    ladder = config([0.9], idle=[{"after_secs": 60, "eviction": stop}])
    assert reachable_levels(ladder, "a") == (offload, EvictionConfig.parse("retain+stop"))
    costs = least_costs(config([0.9]), SwitchModel())
    assert costs["a"] == Costs(wake=1.5, free=3.0)  # WAKE_ALL and SLEEP_OFFLOAD by default
