"""The scheduler core, driven synchronously: grants, switches, drains, failures, shutdown."""

from __future__ import annotations

import pytest

from gpumux.core.errors import (
    ModelNotFound,
    ModelUnavailable,
    QueueFull,
    QueueTimeout,
    ShuttingDown,
)
from gpumux.core.eviction import Step
from gpumux.core.states import ModelState
from gpumux.scheduler.inputs import (
    AdminEvict,
    AdminMode,
    AdminReset,
    AdminRestart,
    AdminSwitch,
    BeginShutdown,
    ProcessExited,
)
from gpumux.scheduler.messages import (
    AdminRefusal,
    Mode,
    OpKind,
    OpResult,
    Restarted,
    SwitchFinished,
)
from tests.support.scheduler import Driver, make_config

pytestmark = pytest.mark.unit


def test_first_request_cold_starts_then_is_granted() -> None:
    d = Driver(make_config())
    d.submit(1, "a")
    assert d.state("a") is ModelState.STARTING
    assert d.granted == []
    assert d.finish("a").op.steps == (Step.COLD_START,)
    assert d.granted == [1]
    assert d.state("a") is ModelState.READY


def test_switch_drains_evicts_then_wakes() -> None:
    d = Driver(make_config())
    d.submit(1, "a")
    d.finish("a")
    d.submit(2, "b")  # a holds lease 1 -> a drains, b waits
    assert d.state("a") is ModelState.DRAINING
    assert not d.ops
    d.release(1)  # drain complete -> evict
    evict = d.pending_op("a")
    assert evict.op.kind is OpKind.EVICT
    assert evict.op.steps == (Step.SLEEP_OFFLOAD,)
    assert not evict.op.abort_inflight
    d.finish("a")
    assert d.state("a") is ModelState.SLEEPING
    assert d.state("b") is ModelState.STARTING
    d.finish("b")
    assert d.granted == [1, 2]
    switch = [c for c in d.log if isinstance(c, SwitchFinished)]
    assert switch
    assert switch[-1].target == "b"
    assert switch[-1].victims == ("a",)
    # Back to a: wakes from sleep with /wake_up, not a cold start.
    d.submit(3, "a")
    d.release(2)
    d.finish("b")
    assert d.pending_op("a").op.steps == (Step.WAKE_ALL,)


def test_two_models_that_fit_are_awake_together() -> None:
    d = Driver(make_config(util=0.45))
    d.submit(1, "a")
    d.submit(2, "b")
    assert d.state("a") is ModelState.STARTING
    assert d.state("b") is ModelState.STARTING


def test_drain_timeout_evicts_with_abort() -> None:
    d = Driver(make_config(drain_timeout_secs=5))
    d.submit(1, "a")
    d.finish("a")
    d.submit(2, "b")
    d.now = 5.0
    d.tick()
    assert d.pending_op("a").op.abort_inflight


def test_queue_timeout_is_504_and_leaves_the_queue() -> None:
    d = Driver(make_config())
    d.submit(1, "a")
    d.now = 31.0
    d.tick()
    assert isinstance(d.rejected[1], QueueTimeout)
    assert not d.slot("a").queue
    assert 1 not in d.core.queues.tickets


def test_full_queue_is_429() -> None:
    d = Driver(make_config())
    for t in range(1, 5):
        d.submit(t, "a")
    assert isinstance(d.rejected[4], QueueFull)
    assert d.rejected[4].retry_after


def test_unknown_model_is_404_without_a_switch() -> None:
    d = Driver(make_config())
    d.submit(1, "nope")
    assert isinstance(d.rejected[1], ModelNotFound)
    assert not d.ops


def test_cancel_while_queued_calls_off_the_switch() -> None:
    d = Driver(make_config())
    d.submit(1, "a")
    d.finish("a")
    d.submit(2, "b")
    assert d.state("a") is ModelState.DRAINING
    d.cancel(2)
    assert d.state("a") is ModelState.READY  # the victim keeps serving
    assert any(isinstance(c, SwitchFinished) and c.outcome == "cancelled" for c in d.log)


def test_failed_starts_back_off_then_fail_the_model() -> None:
    d = Driver(make_config())
    d.submit(1, "a")
    d.finish("a", OpResult.FAILED)
    assert d.state("a") is ModelState.STOPPED
    assert not d.ops
    d.now = 1.0
    d.tick()
    d.finish("a", OpResult.FAILED)  # second failure = max_start_failures
    assert d.state("a") is ModelState.FAILED
    assert isinstance(d.rejected[1], ModelUnavailable)
    assert d.rejected[1].retry_after
    d.submit(2, "a")
    assert isinstance(d.rejected[2], ModelUnavailable)


def test_crash_of_ready_model_is_restarted_on_demand() -> None:
    d = Driver(make_config())
    d.submit(1, "a")
    d.finish("a")
    pid = d.slot("a").pid
    assert pid is not None
    d.send(ProcessExited("a", pid, -9))
    assert d.state("a") is ModelState.STOPPING  # orphans of the dead root are killed too
    assert d.pending_op("a").op.kind is OpKind.STOP
    d.finish("a")
    assert d.state("a") is ModelState.STOPPED
    assert any(isinstance(c, Restarted) and c.reason == "crash" for c in d.log)
    d.submit(2, "a")
    assert not d.ops  # backoff first
    d.now = 1.0
    d.tick()
    assert d.state("a") is ModelState.STARTING


def test_exit_of_an_old_pid_is_ignored() -> None:
    d = Driver(make_config())
    d.submit(1, "a")
    d.finish("a")
    d.send(ProcessExited("a", 4242, 0))
    assert d.state("a") is ModelState.READY


def test_wake_fallback_cold_counts_a_restart() -> None:
    d = Driver(make_config())
    d.submit(1, "a")
    d.finish("a")
    d.release(1)
    d.submit(2, "b")
    d.finish("a")
    d.finish("b")
    d.release(2)
    d.submit(3, "a")
    d.finish("b")
    d.finish("a", OpResult.FALLBACK_COLD)
    assert d.state("a") is ModelState.READY
    assert 3 in d.granted
    assert any(isinstance(c, Restarted) and c.reason == "wake_failed" for c in d.log)


def test_failed_eviction_step_leaves_model_stopped() -> None:
    d = Driver(make_config())
    d.submit(1, "a")
    d.finish("a")
    d.release(1)
    d.submit(2, "b")
    d.finish("a", OpResult.FALLBACK_STOP)
    assert d.state("a") is ModelState.STOPPED
    assert d.state("b") is ModelState.STARTING


def test_shutdown_rejects_queue_and_stops_trees() -> None:
    d = Driver(make_config())
    d.submit(1, "a")
    d.finish("a")
    d.submit(2, "b")
    d.send(BeginShutdown())
    assert isinstance(d.rejected[2], ShuttingDown)
    d.release(1)
    assert d.pending_op("a").op.kind in (OpKind.EVICT, OpKind.STOP)
    while d.ops:
        model = next(iter(d.ops.values())).op.model
        d.finish(model)
    assert d.core.models.all_stopped
    d.submit(3, "a")
    assert isinstance(d.rejected[3], ShuttingDown)


def test_warmup_starts_answers_and_evicts_each_model() -> None:
    config = make_config()
    config = config.model_copy(update={"warmup": True})
    d = Driver(config)
    first = d.pending_op("a") if d.ops else None
    d.tick()
    first = d.pending_op("a")
    assert first.op.steps == (Step.COLD_START, Step.WARMUP)
    d.finish("a")
    assert d.pending_op("a").op.kind is OpKind.EVICT
    d.finish("a")
    assert d.pending_op("b").op.steps == (Step.COLD_START, Step.WARMUP)
    d.finish("b")
    d.finish("b")
    assert d.state("a") is ModelState.SLEEPING
    assert d.state("b") is ModelState.SLEEPING


def test_min_active_defers_the_switch() -> None:
    d = Driver(make_config(min_active_secs=5))
    d.submit(1, "a")
    d.finish("a")
    d.release(1)
    d.submit(2, "b")
    assert d.state("a") is ModelState.READY
    assert d.core.next_deadline() == 5.0
    d.now = 5.0
    d.tick()
    assert d.state("a") is ModelState.EVICTING


def test_forced_switch_ignores_min_active_and_replies_when_ready() -> None:
    d = Driver(make_config(min_active_secs=60))
    d.submit(1, "a")
    d.finish("a")
    d.release(1)
    d.admin(AdminSwitch("b"))
    assert d.state("a") is ModelState.EVICTING  # min_active did not hold it
    d.finish("a")
    d.finish("b")
    reply = d.replies()[-1]
    assert reply.ok
    assert reply.data["victims"] == ["a"]
    duration = reply.data["duration_s"]
    assert isinstance(duration, float)
    assert duration >= 0


def test_concurrent_forced_switches_are_serialised() -> None:
    d = Driver(make_config())
    d.admin(AdminSwitch("a"))
    d.admin(AdminSwitch("b"))
    assert d.state("a") is ModelState.STARTING
    assert d.state("b") is ModelState.STOPPED  # waits for the first
    d.finish("a")
    assert d.state("a") is ModelState.EVICTING
    d.finish("a")
    d.finish("b")
    assert [r.ok for r in d.replies()] == [True, True]


def test_manual_mode_pins_a_model_and_stops_automatic_switching() -> None:
    d = Driver(make_config())
    d.admin(AdminMode(Mode.MANUAL, "a"))
    d.finish("a")
    d.submit(1, "b")
    assert d.state("a") is ModelState.READY  # b waits: a is pinned
    assert d.state("b") is ModelState.STOPPED
    d.admin(AdminMode(Mode.AUTO))
    assert d.state("a") is ModelState.EVICTING


def test_evict_restart_reset() -> None:
    d = Driver(make_config())
    d.submit(1, "a")
    d.finish("a")
    d.release(1)
    assert d.answer(AdminEvict("a")).ok
    d.finish("a")
    assert d.state("a") is ModelState.SLEEPING
    assert d.answer(AdminEvict("a")).refusal is AdminRefusal.BUSY  # not ready
    d.admin(AdminRestart("a"))
    assert d.pending_op("a").op.kind is OpKind.STOP
    d.finish("a")
    assert d.pending_op("a").op.steps == (Step.COLD_START,)
    d.finish("a")
    assert d.replies()[-1].ok
    assert d.answer(AdminReset("nope")).refusal is AdminRefusal.UNKNOWN_MODEL


def test_backoff_deadline_is_not_reported_once_the_start_began() -> None:
    """A past retry time must not be a deadline while starting (the runner would spin)."""
    d = Driver(make_config())
    d.submit(1, "a")
    d.finish("a", OpResult.FAILED)
    assert d.core.next_deadline() == 1.0  # backoff before the retry
    d.now = 1.0
    d.tick()
    assert d.state("a") is ModelState.STARTING
    d.now = 2.0
    deadline = d.core.next_deadline()
    assert deadline is None or deadline > d.now
