"""The agent-check protocol as a pure function: request grammar, replies, weights."""

from __future__ import annotations

from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpumux.admin.node import ModelStatus, NodeStatus
from gpumux.core.states import DaemonState, ModelState
from gpumux.fleet.agent import (
    MAX_REQUEST_BYTES,
    WARMTH,
    AgentQuery,
    Tier,
    parse_request,
    reply_for,
    weight_percent,
)

pytestmark = pytest.mark.unit
M = ModelState


def model(
    state: ModelState = M.READY,
    *,
    cost: float = 0.0,
    blocked: str = "",
    refused: str = "",
    inflight: int = 0,
    queued: int = 0,
) -> ModelStatus:
    return ModelStatus(
        model="m",
        state=state,
        queue_depth=queued,
        inflight=inflight,
        max_concurrency=4,
        wake_cost_secs=cost,
        blocked=blocked,
        refused=refused,
    )


def node(m: ModelStatus, state: DaemonState = DaemonState.SERVING) -> NodeStatus:
    return NodeStatus(
        node="n1",
        daemon_state=state,
        mode="auto",
        pinned=None,
        models=MappingProxyType({m.model: m}),
        gpus=(),
        host_available_bytes=None,
        host_total_bytes=None,
    )


@pytest.mark.parametrize(
    ("raw", "query"),
    [
        (b"m\n", AgentQuery("m", Tier.COLD)),
        (b"m awake\n", AgentQuery("m", Tier.AWAKE)),
        (b"Qwen/Qwen2.5-7B asleep\r\n", AgentQuery("Qwen/Qwen2.5-7B", Tier.ASLEEP)),
        (b"  m   cold  ", AgentQuery("m", Tier.COLD)),  # no newline: the peer closed after it
        (b"", None),
        (b"\n", None),
        (b"m hot\n", None),
        (b"m awake extra\n", None),
        (b"\xff\xfe\n", None),
        (b"m\x00\n", None),
        (b"m" * (MAX_REQUEST_BYTES + 1), None),
    ],
)
def test_parse_request(raw: bytes, query: AgentQuery | None) -> None:
    assert parse_request(raw) == query


@given(st.binary(max_size=2 * MAX_REQUEST_BYTES))
def test_any_bytes_parse_or_are_refused_never_raise(raw: bytes) -> None:
    query = parse_request(raw)
    reply = reply_for(node(model()), query)
    assert reply.endswith("\n")
    assert reply.count("\n") == 1
    assert query is not None or reply == "maint\n"


def test_malformed_unknown_and_not_serving_are_maint() -> None:
    assert reply_for(node(model()), None) == "maint\n"
    assert reply_for(node(model()), AgentQuery("other")) == "maint\n"
    for state in (DaemonState.STARTING, DaemonState.DRAINING, DaemonState.STOPPED):
        assert reply_for(node(model(), state), AgentQuery("m")) == "maint\n"


def test_awake_and_not_saturated_is_up_at_full_weight_in_every_tier() -> None:
    for tier in Tier:
        assert reply_for(node(model()), AgentQuery("m", tier)) == "up ready 100%\n"
    saturated = model(inflight=4)
    assert reply_for(node(saturated), AgentQuery("m", Tier.AWAKE)) == "up ready 50%\n"


def test_cannot_host_now_is_drain_except_as_a_place_to_wait() -> None:
    busy = model(M.STOPPED, cost=30, blocked="no evictable model frees enough memory yet")
    for tier in (Tier.AWAKE, Tier.ASLEEP, Tier.COLD):
        assert reply_for(node(busy), AgentQuery("m", tier)) == "drain\n"
    assert reply_for(node(busy), AgentQuery("m", Tier.QUEUE)) == "up ready 1%\n"
    never = model(M.FAILED, blocked="failed", refused="failed")
    assert reply_for(node(never), AgentQuery("m", Tier.QUEUE)) == "drain\n"


@pytest.mark.parametrize(
    ("state", "tiers_up"),
    [
        (M.READY, set(Tier)),
        (M.STARTING, set(Tier)),
        (M.WAKING, set(Tier)),
        (M.SLEEPING, {Tier.ASLEEP, Tier.COLD, Tier.QUEUE}),
        (M.SUSPENDED, {Tier.ASLEEP, Tier.COLD, Tier.QUEUE}),
        (M.CHECKPOINTED, {Tier.ASLEEP, Tier.COLD, Tier.QUEUE}),
        (M.DRAINING, {Tier.ASLEEP, Tier.COLD, Tier.QUEUE}),
        (M.STOPPED, {Tier.COLD, Tier.QUEUE}),
        (M.FAILED, {Tier.COLD, Tier.QUEUE}),
    ],
)
def test_tiers_nest_awake_in_asleep_in_cold_in_queue(
    state: ModelState, tiers_up: set[Tier]
) -> None:
    status = node(model(state, cost=5))
    up = {t for t in Tier if reply_for(status, AgentQuery("m", t)).startswith("up ready")}
    assert up == tiers_up


def test_every_state_has_a_warmth() -> None:
    assert set(WARMTH) == set(ModelState)


def test_asleep_weight_falls_with_wake_cost_and_stays_above_zero() -> None:
    weights = [weight_percent(model(M.SLEEPING, cost=c)) for c in (0, 0.5, 5, 30, 300, 1e9)]
    assert weights == sorted(weights, reverse=True)
    assert weights[0] == 90
    assert weights[-1] == 1
    assert weight_percent(model(M.STARTING)) < weight_percent(model(M.READY, inflight=4))
    # A cold start (STOPPED) is weighed by its own, larger learned cost.
    assert weight_percent(model(M.STOPPED, cost=30)) < weight_percent(model(M.SLEEPING, cost=5))
