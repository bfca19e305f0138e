"""Priorities in every policy: a higher-priority waiting queue goes first, and a lower one
still goes first once its max_wait bound (less one switch) has come."""

from __future__ import annotations

import pytest

from gpumux.core.config import PolicyConfig
from gpumux.core.config_rules import parse_config
from gpumux.core.states import ModelState
from gpumux.policy.base import ModelView, Snapshot
from gpumux.policy.registry import make_policy
from tests.support.policy_views import model_view

pytestmark = pytest.mark.unit
M = ModelState
POLICIES = ("fifo", "cost_aware", "time_slice")


def snapshot(now: float, *views: ModelView) -> Snapshot:
    return Snapshot(now, {v.alias: v for v in views}, switching=False)


def holder_and_waiting(now: float, low_since: float) -> Snapshot:
    """`a` ran dry after its minimum visit; `low` (priority 0) waits longer than `high`."""
    return snapshot(
        now,
        model_view("a", M.READY, ready_since=0.0),
        model_view("low", queued=1, oldest_enqueued_at=low_since, wake_cost_secs=1.0),
        model_view("high", queued=1, oldest_enqueued_at=now - 0.5, priority=5),
    )


@pytest.mark.parametrize("policy_type", POLICIES)
def test_a_higher_priority_queue_goes_first(policy_type: str) -> None:
    policy = make_policy(PolicyConfig(policy_type=policy_type, max_wait_secs=15))
    decision = policy.decide(holder_and_waiting(now=20.0, low_since=18.0))
    assert decision.wake[0] == "high"


@pytest.mark.parametrize("policy_type", POLICIES)
def test_a_lower_priority_queue_at_its_bound_goes_first(policy_type: str) -> None:
    policy = make_policy(PolicyConfig(policy_type=policy_type, max_wait_secs=15))
    decision = policy.decide(holder_and_waiting(now=20.0, low_since=5.5))  # waited 14.5 s
    assert decision.wake[0] == "low"


def test_fifo_rechecks_when_a_lower_priority_request_becomes_overdue() -> None:
    policy = make_policy(PolicyConfig(policy_type="fifo", max_wait_secs=15))
    decision = policy.decide(holder_and_waiting(now=20.0, low_since=18.0))
    assert decision.recheck_at == pytest.approx(18.0 + 15 - 1.0)


def test_equal_priorities_keep_plain_oldest_first() -> None:
    policy = make_policy(PolicyConfig(policy_type="fifo"))
    decision = policy.decide(
        snapshot(
            10,
            model_view("b", queued=1, oldest_enqueued_at=8, wake_cost_secs=30),
            model_view("c", queued=1, oldest_enqueued_at=4),
        )
    )
    assert decision.wake == ("c", "b")
    assert decision.recheck_at is None


def test_priority_is_an_integer() -> None:
    config, _ = parse_config({"models": {"a": {"model_path": "m", "port": 8001, "priority": -2}}})
    assert config.models["a"].priority == -2
    with pytest.raises(Exception, match="priority"):
        parse_config({"models": {"a": {"model_path": "m", "port": 8001, "priority": 1.5}}})
