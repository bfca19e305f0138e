"""fifo on hand-built snapshots: oldest request first, manual pinning, restart backoff."""

from __future__ import annotations

import pytest

from gpumux.core.config import PolicyConfig
from gpumux.core.states import ModelState
from gpumux.policy.base import ModelView, Snapshot
from gpumux.policy.fifo import FifoPolicy
from gpumux.policy.registry import make_policy
from tests.support.policy_views import model_view

pytestmark = pytest.mark.unit
M = ModelState


def view(alias: str, state: ModelState = M.SLEEPING, **fields: object) -> ModelView:
    return model_view(alias, state, **fields)


def snapshot(now: float, *views: ModelView, pinned: str | None = None) -> Snapshot:
    return Snapshot(now, {v.alias: v for v in views}, switching=False, pinned=pinned)


def test_registry_builds_fifo_by_name() -> None:
    assert isinstance(make_policy(PolicyConfig(policy_type="fifo")), FifoPolicy)


def test_wakes_waiting_models_oldest_request_first() -> None:
    policy = FifoPolicy(PolicyConfig())
    decision = policy.decide(
        snapshot(
            10,
            view("a", M.READY, inflight=3, ready_since=0),
            view("b", queued=1, oldest_enqueued_at=8),
            view("c", queued=5, oldest_enqueued_at=4),
        )
    )
    assert decision.wake == ("c", "b")
    assert decision.recheck_at is None


def test_a_serving_model_is_never_listed() -> None:
    """A READY model's queue is granted by the core; listing it would mean nothing."""
    decision = FifoPolicy(PolicyConfig()).decide(
        snapshot(1, view("a", M.READY, queued=2, oldest_enqueued_at=0, ready_since=0))
    )
    assert decision.wake == ()


def test_manual_mode_wakes_only_the_pinned_model() -> None:
    decision = FifoPolicy(PolicyConfig()).decide(
        snapshot(
            5,
            view("a", queued=1, oldest_enqueued_at=1),
            view("b", queued=1, oldest_enqueued_at=2),
            pinned="b",
        )
    )
    assert decision.wake == ("b",)


def test_restart_backoff_defers_and_names_its_end() -> None:
    decision = FifoPolicy(PolicyConfig()).decide(
        snapshot(
            5,
            view("a", M.STOPPED, queued=1, oldest_enqueued_at=1, retry_not_before=9),
            view("b", queued=1, oldest_enqueued_at=2),
        )
    )
    assert decision.wake == ("b",)
    assert decision.recheck_at == 9
