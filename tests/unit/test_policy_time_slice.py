"""time_slice on hand-built snapshots: exhaustive service, quanta, the wait bound, switches."""

from __future__ import annotations

import pytest

from gpumux.core.config import PolicyConfig
from gpumux.core.states import ModelState
from gpumux.policy.base import Decision, ModelView, Snapshot
from gpumux.policy.registry import make_policy
from gpumux.policy.time_slice import QUANTUM_PER_SWITCH, TimeSlicePolicy
from tests.support.policy_views import model_view

pytestmark = pytest.mark.unit
M = ModelState
#: min_active 5 s, min quantum 2 s, max wait 15 s; learned round trip 2 + 3 = 5 s.
CONFIG = PolicyConfig(policy_type="time_slice", min_active_secs=5, min_quantum_ms=2000)


def view(alias: str, state: ModelState = M.SLEEPING, **fields: object) -> ModelView:
    """Learned costs: evict 2.0 s, wake 3.0 s, unless given."""
    return model_view(alias, state, **{"evict_cost_secs": 2.0, "wake_cost_secs": 3.0, **fields})


def decide(now: float, *views: ModelView, config: PolicyConfig = CONFIG) -> Decision:
    snapshot = Snapshot(now, {v.alias: v for v in views}, switching=False)
    decision = TimeSlicePolicy(config).decide(snapshot)
    assert decision.recheck_at is None or decision.recheck_at > now
    return decision


def serving(inflight: int = 4, since: float = 0.0, **fields: object) -> ModelView:
    return view("a", M.READY, inflight=inflight, ready_since=since, **fields)


def test_registry_builds_time_slice_by_name() -> None:
    assert isinstance(make_policy(CONFIG), TimeSlicePolicy)


def test_busy_model_keeps_the_gpu_within_its_quantum() -> None:
    """b waits; the next look is at the bound for b's request (before a's quantum ends)."""
    decision = decide(8, serving(), view("b", queued=1, oldest_enqueued_at=7))
    assert decision.wake == ()
    quantum = QUANTUM_PER_SWITCH * 5.0  # 20 s
    assert decision.recheck_at == min(7 + 15, 0 + quantum)


def test_model_that_ran_dry_gives_way_after_its_minimum_visit() -> None:
    decision = decide(6, serving(inflight=0), view("b", queued=2, oldest_enqueued_at=5.5))
    assert decision.wake == ("b",)
    assert "ran dry" in decision.reasons["b"]


def test_minimum_visit_is_honoured_even_when_idle() -> None:
    """min_active_secs (5) outranks min_quantum_ms (2); recheck exactly when it ends."""
    decision = decide(3, serving(inflight=0, since=1), view("b", queued=1, oldest_enqueued_at=2))
    assert decision.wake == ()
    assert decision.recheck_at == 6


def test_min_quantum_floor_when_longer_than_min_active() -> None:
    config = PolicyConfig(min_active_secs=0, min_quantum_ms=3000)
    early = decide(2, serving(inflight=0), view("b", queued=1, oldest_enqueued_at=1), config=config)
    assert early.wake == ()
    assert early.recheck_at == 3
    late = decide(3, serving(inflight=0), view("b", queued=1, oldest_enqueued_at=1), config=config)
    assert late.wake == ("b",)


def test_quantum_grows_with_the_measured_switch_cost() -> None:
    cheap = TimeSlicePolicy(CONFIG).quantum_secs(view("x", evict_cost_secs=0.1, wake_cost_secs=0.1))
    dear = TimeSlicePolicy(CONFIG).quantum_secs(view("x", evict_cost_secs=4, wake_cost_secs=6))
    assert cheap == 2.0  # the min_quantum_ms floor
    assert dear == QUANTUM_PER_SWITCH * 10


def test_spent_quantum_hands_over_even_while_busy() -> None:
    config = PolicyConfig(max_wait_secs=1000, min_active_secs=0)
    quantum = QUANTUM_PER_SWITCH * 5.0
    before = decide(
        quantum - 1, serving(), view("b", queued=1, oldest_enqueued_at=1), config=config
    )
    assert before.wake == ()
    assert before.recheck_at == quantum
    after = decide(quantum, serving(), view("b", queued=1, oldest_enqueued_at=1), config=config)
    assert after.wake == ("b",)
    assert "quantum" in after.reasons["b"]


def test_wait_bound_preempts_a_busy_model_on_a_timer() -> None:
    """At oldest + max_wait_secs the switch starts, whatever the holder is doing."""
    decision = decide(22, serving(since=10), view("b", queued=1, oldest_enqueued_at=7))
    assert decision.wake == ("b",)
    assert decision.reasons["b"] == "max_wait_secs bound"


def test_a_switch_in_progress_is_never_idle() -> None:
    """Nothing is READY while a evicts, but b must wait for that switch, not start another."""
    for state in (M.DRAINING, M.EVICTING, M.WAKING, M.STARTING):
        holder = view("a", state, queued=0, ready_since=0)
        decision = decide(100, holder, view("b", queued=3, oldest_enqueued_at=1))
        assert decision.wake == (), state


def test_a_wake_under_way_does_not_freeze_the_models_beside_it() -> None:
    """Co-resident models: x cold-starting takes memory, but a READY idle model can still
    give way to c (an eviction under way, by contrast, is waited for)."""
    starting = view("x", M.STARTING)
    decision = decide(10, starting, serving(inflight=0), view("c", queued=1, oldest_enqueued_at=9))
    assert decision.wake == ("c",)
    evicting = view("x", M.EVICTING)
    decision = decide(10, evicting, serving(inflight=0), view("c", queued=1, oldest_enqueued_at=9))
    assert decision.wake == ()


def test_the_target_of_a_switch_under_way_stays_first() -> None:
    decision = decide(
        100,
        view("a", M.EVICTING),
        view("b", queued=1, oldest_enqueued_at=50, switch_pending=True),
        view("c", queued=9, oldest_enqueued_at=10),
    )
    assert decision.wake[0] == "b"


def test_most_urgent_queue_goes_next() -> None:
    decision = decide(
        30,
        serving(inflight=0),
        view("b", queued=9, oldest_enqueued_at=25),
        view("c", queued=1, oldest_enqueued_at=20),
    )
    assert decision.wake == ("c",)  # b may not jump c: c's bound comes first


def test_a_younger_queue_may_go_first_only_if_the_older_keeps_its_bound() -> None:
    config = PolicyConfig(max_wait_secs=100, min_active_secs=5, min_quantum_ms=0)
    decision = decide(
        30,
        serving(inflight=0),
        view("b", queued=9, oldest_enqueued_at=25, switch_pending=False),
        view("c", queued=1, oldest_enqueued_at=20, gpus=(0,)),
        config=config,
    )
    assert decision.wake == ("c", "b")  # plenty of slack: both qualify, c still first


def test_the_bound_is_planned_over_every_waiting_model() -> None:
    """With b and c waiting, b's switch starts early enough that c's can follow in time."""
    decision = decide(
        8,
        serving(),
        view("b", queued=1, oldest_enqueued_at=7),
        view("c", queued=1, oldest_enqueued_at=7.5),
    )
    visit = 5 + 5.0  # round trip + minimum visit of b
    assert decision.wake == ()
    assert decision.recheck_at == pytest.approx(7.5 + 15 - visit)


def test_learned_drains_are_planned_for_with_a_margin() -> None:
    """The tour budgets the holder's learned drain (twice over: drains vary) before b's wake."""
    b = view("b", queued=1, oldest_enqueued_at=7)
    c = view("c", queued=1, oldest_enqueued_at=7.5)
    plain = decide(8, serving(), b, c)
    draining = decide(8, serving(drain_cost_secs=1.0), b, c)
    assert plain.recheck_at is not None
    assert draining.recheck_at == pytest.approx(plain.recheck_at - 2 * 1.0)


def test_models_that_fit_are_woken_at_once() -> None:
    decision = decide(
        1,
        serving(gpus=(0,)),
        view("b", queued=1, oldest_enqueued_at=0.5, gpus=(1,), fits_now=True),
    )
    assert decision.wake == ("b",)


def test_other_gpus_do_not_hold_a_model_back() -> None:
    """A switch on GPU 1 does not block a decision about GPU 0."""
    decision = decide(
        10,
        serving(inflight=0),
        view("b", queued=1, oldest_enqueued_at=9),
        view("c", M.WAKING, gpus=(1,)),
        view("d", queued=1, oldest_enqueued_at=8, gpus=(1,)),
    )
    assert decision.wake == ("b",)


def test_manual_mode_and_backoff() -> None:
    snapshot = Snapshot(
        10,
        {
            "a": serving(inflight=0),
            "b": view("b", M.STOPPED, queued=1, oldest_enqueued_at=1, retry_not_before=12),
            "c": view("c", queued=1, oldest_enqueued_at=2),
        },
        switching=False,
        pinned="b",
    )
    decision = TimeSlicePolicy(CONFIG).decide(snapshot)
    assert decision.wake == ()
    assert decision.recheck_at == 12
