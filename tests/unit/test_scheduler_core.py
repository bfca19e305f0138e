"""The scheduler core, driven synchronously: grants, switches, drains, failures, shutdown."""

from __future__ import annotations

from typing import Any

import pytest

from gpumux.core.config import Config
from gpumux.core.errors import (
    ModelNotFound,
    ModelUnavailable,
    QueueFull,
    QueueTimeout,
    ShuttingDown,
)
from gpumux.core.eviction import Step
from gpumux.core.states import ModelState
from gpumux.policy.registry import make_policy
from gpumux.scheduler.messages import (
    Command,
    Grant,
    OpKind,
    OpOutcome,
    OpResult,
    Reject,
    Restarted,
    StartOp,
    SwitchFinished,
)
from gpumux.scheduler.state.core import SchedulerCore

pytestmark = pytest.mark.unit
GIB = 1024**3


def make_config(util: float = 0.9, models: int = 2, **policy: Any) -> Config:
    raw: dict[str, Any] = {
        "models": {
            name: {
                "model_path": f"m/{name}",
                "port": 8100 + i,
                "extra_args": ["--gpu-memory-utilization", str(util)],
                "max_queue": 3,
            }
            for i, name in enumerate("abcdefgh"[:models])
        },
        "policy": {"min_active_secs": 0, "request_timeout_secs": 30, **policy},
        "gpu": {"probe": "fake", "fake_capacity_gib": [80]},
        "supervision": {"max_start_failures": 2, "restart_backoff_secs": 1},
    }
    return Config.model_validate(raw)


class Driver:
    """Feeds the core and records commands, like the async runner does."""

    def __init__(self, config: Config) -> None:
        self.core = SchedulerCore(config, make_policy(config.policy), {0: 80 * GIB})
        self.now = 0.0
        self.ops: dict[int, StartOp] = {}
        self.granted: list[int] = []
        self.rejected: dict[int, Exception] = {}
        self.log: list[Command] = []

    def feed(self, commands: list[Command]) -> None:
        for c in commands:
            self.log.append(c)
            if isinstance(c, StartOp):
                self.ops[c.op.op_id] = c
            elif isinstance(c, Grant):
                self.granted.append(c.ticket)
            elif isinstance(c, Reject):
                self.rejected[c.ticket] = c.error

    def submit(self, ticket: int, model: str) -> None:
        self.feed(self.core.submit(ticket, model, self.now))

    def pending_op(self, model: str) -> StartOp:
        return next(s for s in self.ops.values() if s.op.model == model)

    def finish(self, model: str, result: OpResult = OpResult.OK) -> StartOp:
        start = self.pending_op(model)
        del self.ops[start.op.op_id]
        self.feed(
            self.core.op_done(
                OpOutcome(start.op.op_id, result, pid=1000 + start.op.op_id), self.now
            )
        )
        return start

    def state(self, model: str) -> ModelState:
        return self.core.slots[model].state


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
    d.feed(d.core.release(1, d.now))  # drain complete -> evict
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
    d.feed(d.core.release(2, d.now))
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
    d.feed(d.core.tick(d.now))
    assert d.pending_op("a").op.abort_inflight


def test_queue_timeout_is_504_and_leaves_the_queue() -> None:
    d = Driver(make_config())
    d.submit(1, "a")
    d.now = 31.0
    d.feed(d.core.tick(d.now))
    assert isinstance(d.rejected[1], QueueTimeout)
    assert not d.core.slots["a"].queue
    assert 1 not in d.core.tickets


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
    d.feed(d.core.cancel(2, d.now))
    assert d.state("a") is ModelState.READY  # the victim keeps serving
    assert any(isinstance(c, SwitchFinished) and c.outcome == "cancelled" for c in d.log)


def test_failed_starts_back_off_then_fail_the_model() -> None:
    d = Driver(make_config())
    d.submit(1, "a")
    d.finish("a", OpResult.FAILED)
    assert d.state("a") is ModelState.STOPPED
    assert not d.ops
    d.now = 1.0
    d.feed(d.core.tick(d.now))
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
    pid = d.core.slots["a"].pid
    assert pid is not None
    d.feed(d.core.process_exited("a", pid, -9, d.now))
    assert d.state("a") is ModelState.STOPPING  # orphans of the dead root are killed too
    assert d.pending_op("a").op.kind is OpKind.STOP
    d.finish("a")
    assert d.state("a") is ModelState.STOPPED
    assert any(isinstance(c, Restarted) and c.reason == "crash" for c in d.log)
    d.submit(2, "a")
    assert not d.ops  # backoff first
    d.now = 1.0
    d.feed(d.core.tick(d.now))
    assert d.state("a") is ModelState.STARTING


def test_exit_of_an_old_pid_is_ignored() -> None:
    d = Driver(make_config())
    d.submit(1, "a")
    d.finish("a")
    d.feed(d.core.process_exited("a", 4242, 0, d.now))
    assert d.state("a") is ModelState.READY


def test_wake_fallback_cold_counts_a_restart() -> None:
    d = Driver(make_config())
    d.submit(1, "a")
    d.finish("a")
    d.feed(d.core.release(1, d.now))
    d.submit(2, "b")
    d.finish("a")
    d.finish("b")
    d.feed(d.core.release(2, d.now))
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
    d.feed(d.core.release(1, d.now))
    d.submit(2, "b")
    d.finish("a", OpResult.FALLBACK_STOP)
    assert d.state("a") is ModelState.STOPPED
    assert d.state("b") is ModelState.STARTING


def test_shutdown_rejects_queue_and_stops_trees() -> None:
    d = Driver(make_config())
    d.submit(1, "a")
    d.finish("a")
    d.submit(2, "b")
    d.feed(d.core.begin_shutdown(d.now))
    assert isinstance(d.rejected[2], ShuttingDown)
    d.feed(d.core.release(1, d.now))
    assert d.pending_op("a").op.kind in (OpKind.EVICT, OpKind.STOP)
    while d.ops:
        model = next(iter(d.ops.values())).op.model
        d.finish(model)
    assert d.core.all_stopped
    d.submit(3, "a")
    assert isinstance(d.rejected[3], ShuttingDown)


def test_warmup_starts_answers_and_evicts_each_model() -> None:
    config = make_config()
    config = config.model_copy(update={"warmup": True})
    d = Driver(config)
    first = d.pending_op("a") if d.ops else None
    d.feed(d.core.tick(0))
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
    d.feed(d.core.release(1, d.now))
    d.submit(2, "b")
    assert d.state("a") is ModelState.READY
    assert d.core.next_deadline() == 5.0
    d.now = 5.0
    d.feed(d.core.tick(d.now))
    assert d.state("a") is ModelState.EVICTING


def admin(d: Driver, name: str, *args: Any) -> Any:
    replies: list[Any] = []
    method = getattr(d.core, f"admin_{name}")
    for c in method(*args, 99, d.now):
        d.feed([c])
        if type(c).__name__ == "AdminReply":
            replies.append(c)
    return replies


def replies_in(d: Driver) -> list[Any]:
    return [c for c in d.log if type(c).__name__ == "AdminReply"]


def test_forced_switch_ignores_min_active_and_replies_when_ready() -> None:
    d = Driver(make_config(min_active_secs=60))
    d.submit(1, "a")
    d.finish("a")
    d.feed(d.core.release(1, d.now))
    admin(d, "switch", "b")
    assert d.state("a") is ModelState.EVICTING  # min_active did not hold it
    d.finish("a")
    d.finish("b")
    reply = replies_in(d)[-1]
    assert reply.ok
    assert reply.data["victims"] == ["a"]
    assert reply.data["duration_s"] >= 0


def test_concurrent_forced_switches_are_serialised() -> None:
    d = Driver(make_config())
    admin(d, "switch", "a")
    admin(d, "switch", "b")
    assert d.state("a") is ModelState.STARTING
    assert d.state("b") is ModelState.STOPPED  # waits for the first
    d.finish("a")
    assert d.state("a") is ModelState.EVICTING
    d.finish("a")
    d.finish("b")
    assert [r.ok for r in replies_in(d)] == [True, True]


def test_manual_mode_pins_a_model_and_stops_automatic_switching() -> None:
    d = Driver(make_config())
    admin(d, "mode", "manual", "a")
    d.finish("a")
    d.submit(1, "b")
    assert d.state("a") is ModelState.READY  # b waits: a is pinned
    assert d.state("b") is ModelState.STOPPED
    admin(d, "mode", "auto", None)
    assert d.state("a") is ModelState.EVICTING


def test_evict_restart_reset() -> None:
    d = Driver(make_config())
    d.submit(1, "a")
    d.finish("a")
    d.feed(d.core.release(1, d.now))
    assert admin(d, "evict", "a")[0].ok
    d.finish("a")
    assert d.state("a") is ModelState.SLEEPING
    assert not admin(d, "evict", "a")[0].ok  # not ready
    admin(d, "restart", "a")
    assert d.pending_op("a").op.kind is OpKind.STOP
    d.finish("a")
    assert d.pending_op("a").op.steps == (Step.COLD_START,)
    d.finish("a")
    assert replies_in(d)[-1].ok
    assert admin(d, "reset", "nope")[0].status == 404


def test_backoff_deadline_is_not_reported_once_the_start_began() -> None:
    """A past retry time must not be a deadline while starting (the runner would spin)."""
    d = Driver(make_config())
    d.submit(1, "a")
    d.finish("a", OpResult.FAILED)
    assert d.core.next_deadline() == 1.0  # backoff before the retry
    d.now = 1.0
    d.feed(d.core.tick(d.now))
    assert d.state("a") is ModelState.STARTING
    d.now = 2.0
    deadline = d.core.next_deadline()
    assert deadline is None or deadline > d.now
