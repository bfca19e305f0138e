"""The demand estimate, the GDSF victim rank and the eviction-ahead rule (pure)."""

from __future__ import annotations

import math

import pytest

from gpumux.core.placement import Tenant, admit
from gpumux.core.states import ModelState
from gpumux.policy.ahead import AHEAD_MARGIN, Contender, Idler, should_leave
from gpumux.policy.demand import Demand
from gpumux.policy.victims import gdsf_rank, value_of_staying

pytestmark = pytest.mark.unit
GIB = 1024**3
CAP = {0: 80 * GIB}


def test_a_periodic_load_is_learned_and_its_next_arrival_predicted() -> None:
    demand = Demand(time_constant=300.0)
    for i in range(5):
        demand.arrived(10.0 * i)
    assert demand.mean_gap() == pytest.approx(10.0, rel=0.05)
    assert demand.next_at(41.0) == pytest.approx(50.0, rel=0.01)


def test_a_model_that_went_quiet_looks_ever_further_from_its_next_use() -> None:
    demand = Demand(time_constant=60.0)
    for i in range(10):
        demand.arrived(2.0 * i)
    soon, later = demand.next_at(100.0) - 100.0, demand.next_at(300.0) - 300.0
    assert soon < later
    assert demand.rate_at(300.0) < demand.rate_at(100.0)


def test_no_arrival_or_a_single_one_predicts_no_next_use() -> None:
    demand = Demand(time_constant=60.0)
    assert math.isinf(demand.next_at(5.0))
    demand.arrived(1.0)
    assert math.isinf(demand.next_at(5.0))


def test_the_rate_follows_a_drift_within_its_time_constant() -> None:
    demand = Demand(time_constant=30.0)
    for i in range(100):
        demand.arrived(1.0 * i)  # 1 / s
    for i in range(1, 20):
        demand.arrived(99.0 + 10.0 * i)  # then 0.1 / s
    assert demand.rate_at(289.0) < 0.2


def tenant(alias: str, *, rate: float, wake: float, util: float = 0.45, used: float = 0) -> Tenant:
    return Tenant(
        alias=alias,
        gpus=(0,),
        utilization=util,
        state=ModelState.READY,
        residual_bytes=0,
        resting_state=ModelState.SLEEPING,
        idle=True,
        last_used_at=used,
        evictable_at=0,
        wake_cost_secs=wake,
        evict_cost_secs=1.0,
        reuse_rate=rate,
    )


def test_gdsf_keeps_the_model_that_is_dear_to_bring_back_and_often_needed() -> None:
    popular = tenant("popular", rate=1.0, wake=5.0, used=0)
    rare = tenant("rare", rate=0.01, wake=5.0, used=10)  # used more recently, needed less
    dear = tenant("dear", rate=0.01, wake=500.0, used=0)
    need = tenant("t", rate=0.0, wake=1.0, util=0.45)
    # Two at 0.45 fill the GPU with t: one must leave, and it is the rare cheap one.
    for keeper in (popular, dear):
        tenants = {keeper.alias: keeper, "rare": rare, "t": need}
        assert admit("t", tenants, CAP, now=20, rank=gdsf_rank).victims == ("rare",)
    assert value_of_staying(dear, GIB) > value_of_staying(rare, GIB)
    # Freeing more memory for the same price makes a model a better victim.
    assert value_of_staying(rare, 40 * GIB) < value_of_staying(rare, GIB)


def test_without_a_rank_placement_keeps_least_recently_used_first() -> None:
    a = tenant("a", rate=1.0, wake=5.0, used=0)
    b = tenant("b", rate=0.0, wake=5.0, used=10)
    t = tenant("t", rate=0.0, wake=1.0)
    assert admit("t", {"a": a, "b": b, "t": t}, CAP, now=20).victims == ("a",)
    assert admit("t", {"a": a, "b": b, "t": t}, CAP, now=20, rank=gdsf_rank).victims == ("b",)


def test_a_pinned_model_is_never_offered_as_a_victim_whatever_its_rank() -> None:
    a = Tenant(**{**tenant("a", rate=0.0, wake=0.0).__dict__, "pinned": True})
    b = tenant("b", rate=10.0, wake=100.0)
    t = tenant("t", rate=0.0, wake=1.0)
    assert admit("t", {"a": a, "b": b, "t": t}, CAP, now=20, rank=gdsf_rank).victims == ("b",)


def test_an_idle_model_leaves_ahead_only_for_one_needed_sooner_and_not_soon_itself() -> None:
    idler = Idler("a", next_need_at=100.0, round_trip_secs=10.0)
    assert should_leave(idler, Contender("b", queued=1, next_need_at=math.inf), now=50.0)
    assert should_leave(idler, Contender("b", queued=0, next_need_at=60.0), now=50.0)
    assert not should_leave(idler, Contender("b", queued=0, next_need_at=120.0), now=50.0)
    assert not should_leave(idler, Contender("b", queued=0, next_need_at=math.inf), now=50.0)
    soon = Idler("a", next_need_at=50.0 + AHEAD_MARGIN * 10.0 - 1, round_trip_secs=10.0)
    assert not should_leave(soon, Contender("b", queued=1, next_need_at=math.inf), now=50.0)
