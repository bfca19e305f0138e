"""cost_aware on hand-built snapshots: amortization, coalescing, the wait bound, switches."""

from __future__ import annotations

import pytest

from gpumux.core.config import PolicyConfig
from gpumux.core.states import ModelState
from gpumux.policy.base import Decision, ModelView, Snapshot
from gpumux.policy.cost_aware import CostAwarePolicy
from gpumux.policy.registry import make_policy
from tests.support.policy_views import model_view

pytestmark = pytest.mark.unit
M = ModelState
#: Switch cost a→b = a's eviction (4 s) + b's wake (6 s) = 10 s, so 0.5 × 10 = 5 requests.
CONFIG = PolicyConfig(
    policy_type="cost_aware",
    min_active_secs=0,
    min_quantum_ms=1000,
    coalesce_window_ms=2000,
    amortization_factor=0.5,
    max_wait_secs=15,
)


def view(alias: str, state: ModelState = M.SLEEPING, **fields: object) -> ModelView:
    """Learned costs: evict 4.0 s, wake 6.0 s, unless given."""
    return model_view(alias, state, **{"evict_cost_secs": 4.0, "wake_cost_secs": 6.0, **fields})


def serving(inflight: int = 4, since: float = 0.0) -> ModelView:
    return view("a", M.READY, inflight=inflight, ready_since=since)


def decide(now: float, *views: ModelView, config: PolicyConfig = CONFIG) -> Decision:
    snapshot = Snapshot(now, {v.alias: v for v in views}, switching=False)
    decision = CostAwarePolicy(config).decide(snapshot)
    assert decision.recheck_at is None or decision.recheck_at > now
    return decision


def test_registry_builds_cost_aware_by_name() -> None:
    assert isinstance(make_policy(CONFIG), CostAwarePolicy)


def test_required_requests_follow_the_learned_cost() -> None:
    policy = CostAwarePolicy(CONFIG)
    assert policy.required_requests(10) == 5
    assert policy.required_requests(0.5) == 1  # at least one


def test_too_little_demand_waits_for_the_bound() -> None:
    decision = decide(12, serving(), view("b", queued=2, oldest_enqueued_at=10))
    assert decision.wake == ()
    assert decision.recheck_at == 10 + 15


def test_demand_that_amortizes_the_switch_goes_once_the_holder_served_as_long() -> None:
    early = decide(8, serving(), view("b", queued=5, oldest_enqueued_at=6))
    assert early.wake == ()
    assert early.recheck_at == 10  # a has served the 10 s a switch costs
    due = decide(10, serving(), view("b", queued=5, oldest_enqueued_at=6))
    assert due.wake == ("b",)
    assert "amortize" in due.reasons["b"]


def test_idle_holder_coalesces_arrivals_before_switching() -> None:
    waiting = decide(21, serving(inflight=0), view("b", queued=1, oldest_enqueued_at=20))
    assert waiting.wake == ()
    assert waiting.recheck_at == 22  # oldest + coalesce_window_ms
    due = decide(22, serving(inflight=0), view("b", queued=1, oldest_enqueued_at=20))
    assert due.wake == ("b",)


def test_idle_holder_and_enough_demand_switch_at_once() -> None:
    decision = decide(21, serving(inflight=0), view("b", queued=5, oldest_enqueued_at=20.5))
    assert decision.wake == ("b",)


def test_wait_bound_preempts_on_a_timer() -> None:
    decision = decide(25, serving(), view("b", queued=1, oldest_enqueued_at=10))
    assert decision.wake == ("b",)
    assert decision.reasons["b"] == "max_wait_secs bound"


def test_min_quantum_is_honoured() -> None:
    decision = decide(
        30.5, serving(inflight=0, since=30), view("b", queued=9, oldest_enqueued_at=1)
    )
    assert decision.wake == ()
    assert decision.recheck_at == 31


def test_a_switch_in_progress_is_never_idle() -> None:
    for state in (M.DRAINING, M.EVICTING, M.WAKING, M.STARTING):
        decision = decide(100, view("a", state), view("b", queued=9, oldest_enqueued_at=1))
        assert decision.wake == (), state


def test_models_that_fit_are_woken_at_once() -> None:
    decision = decide(1, serving(), view("b", queued=1, oldest_enqueued_at=0.9, fits_now=True))
    assert decision.wake == ("b",)


def test_enough_demand_does_not_jump_an_older_queue_past_its_bound() -> None:
    """c has amortizing demand, but b waited longer and would miss its bound behind c."""
    decision = decide(
        20,
        serving(inflight=0),
        view("b", queued=1, oldest_enqueued_at=6),
        view("c", queued=9, oldest_enqueued_at=19),
    )
    assert decision.wake == ("b",)
