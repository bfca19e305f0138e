"""The scheduler core's parts, each driven alone: no `SchedulerCore`, only what it needs."""

from __future__ import annotations

import dataclasses

import pytest

from gpumux.core.config import Config
from gpumux.core.errors import QueueFull, QueueTimeout, ShuttingDown
from gpumux.core.eviction import Step
from gpumux.core.states import IllegalTransition, ModelState
from gpumux.policy.costs import SwitchCosts
from gpumux.scheduler.messages import (
    Grant,
    Note,
    OpKind,
    QueueWait,
    Reject,
    StartOp,
    StateChanged,
    SwitchFinished,
)
from gpumux.scheduler.state.models import Models
from gpumux.scheduler.state.outbox import Outbox
from gpumux.scheduler.state.queues import Queues
from gpumux.scheduler.state.supervisor import Supervisor
from gpumux.scheduler.state.switches import SwitchBook
from tests.support.scheduler import GIB, Driver, make_config

pytestmark = pytest.mark.unit
M = ModelState


def table(config: Config | None = None) -> Models:
    config = config or make_config()
    models = Models({0: 80 * GIB}, SwitchCosts(), config.policy)
    for alias, model in config.models.items():
        models.add(alias, model, config.eviction_for(alias), GIB)
    return models


def test_the_outbox_keeps_order_and_empties_when_taken() -> None:
    out = Outbox()
    out.note("first", {})
    out.add(Reject(1, ShuttingDown("bye")))
    assert [type(c) for c in out.take()] == [Note, Reject]
    assert out.take() == []


def test_stop_tree_moves_to_stopping_and_starts_one_stop_that_aborts() -> None:
    models = table()
    slot = models.slots["a"]
    slot.state = M.READY
    out = Outbox()
    models.stop_tree(slot, 5.0, out)
    changed, start = out.take()
    assert changed == StateChanged("a", M.READY, M.STOPPING)
    assert isinstance(start, StartOp)
    assert (start.op.kind, start.op.steps, start.op.abort_inflight) == (
        OpKind.STOP,
        (Step.STOP,),
        True,
    )
    assert slot.stopping_from is M.READY  # still holds its GPU memory until stopped
    with pytest.raises(IllegalTransition):
        models.set_state(slot, M.WAKING, Outbox())


def test_queues_admit_up_to_max_queue_then_grant_with_the_process() -> None:
    models = table()
    queues = Queues(models, SwitchCosts(), request_timeout_secs=30)
    slot = models.slots["a"]
    out = Outbox()
    for ticket in range(1, 5):
        queues.enqueue(ticket, slot, 0.0, out)
    (full,) = out.take()
    assert isinstance(full, Reject)
    assert isinstance(full.error, QueueFull)
    assert full.error.retry_after
    slot.pid = 4321
    queues.grant_all(slot, 2.0, out)
    granted = out.take()
    assert [c for c in granted if isinstance(c, Grant)] == [
        Grant(t, "a", 4321, slot.config.port) for t in (1, 2, 3)
    ]
    assert [c.wait_secs for c in granted if isinstance(c, QueueWait)] == [2.0, 2.0, 2.0]
    queues.release(2, 3.0)
    queues.release(2, 3.0)  # a second release of one lease changes nothing
    assert slot.leases == {1, 3}


def test_queues_expire_and_reject_each_ticket_with_its_own_error() -> None:
    models = table()
    queues = Queues(models, SwitchCosts(), request_timeout_secs=30)
    slot = models.slots["b"]
    out = Outbox()
    queues.enqueue(1, slot, 0.0, out)
    queues.enqueue(2, slot, 10.0, out)
    assert queues.deadlines() == [30.0, 40.0]
    queues.expire(30.0, out)
    (timeout,) = out.take()
    assert isinstance(timeout, Reject)
    assert isinstance(timeout.error, QueueTimeout)
    queues.enqueue(3, slot, 31.0, out)
    queues.reject_all(slot, lambda: ShuttingDown("bye"), out)
    first, second = out.take()
    assert isinstance(first, Reject)
    assert isinstance(second, Reject)
    assert (first.ticket, second.ticket) == (2, 3)
    assert first.error is not second.error  # each waiter raises its own exception
    assert not slot.queue
    assert not queues.tickets


def test_the_supervisor_fails_a_model_after_max_start_failures_and_refuses_its_queue() -> None:
    models = table()
    queues = Queues(models, SwitchCosts(), request_timeout_secs=30)
    supervisor = Supervisor(models, queues, make_config().supervision)
    slot = models.slots["a"]
    out = Outbox()
    queues.enqueue(1, slot, 0.0, out)
    supervisor.count_failure(slot, 0.0, out)
    assert slot.retry_not_before == 1.0  # restart_backoff_secs
    supervisor.count_failure(slot, 1.0, out)
    assert slot.state is M.FAILED
    assert [type(c) for c in out.take()] == [StateChanged, Reject]
    assert not supervisor.retry_failed(slot, 2.0, out)
    assert supervisor.retry_failed(slot, 1.0 + make_config().supervision.failed_retry_secs, out)
    assert models.slots["a"].state is M.STOPPED  # half-open: one more start may follow


def test_the_switch_book_learns_costs_from_warm_successful_switches_only() -> None:
    costs = SwitchCosts()
    book = SwitchBook(costs)
    models = table()
    a, b = models.slots["a"], models.slots["b"]
    out = Outbox()
    switch = book.for_target(b, 0.0, out)
    assert book.for_target(b, 1.0, out) is switch  # one switch per target at a time
    switch.victims.append("a")
    switch.phases.extend([("drain", 9.0), ("sleep", 1.0), ("wake", 2.0)])
    book.finish(switch, b, "ok", 4.0, out)
    assert costs.switches == {f"a|b|{b.eviction}": 3.0}  # drain is not a switch cost
    cold = book.for_target(a, 5.0, out)
    cold.cold = True
    book.finish(cold, a, "ok", 6.0, out)
    assert len(costs.switches) == 1
    finished = [c for c in out.take() if isinstance(c, SwitchFinished)]
    assert [(f.target, f.duration_secs) for f in finished] == [("b", 4.0), ("a", 1.0)]
    assert book.last["b"].victims == ("a",)
    assert not book.active


def test_the_view_is_frozen_and_shows_the_state_after_the_step() -> None:
    d = Driver(make_config())
    d.submit(1, "a")
    d.finish("a")
    d.submit(2, "b")
    view = d.core.view()
    a, b = view.models["a"], view.models["b"]
    assert (a.state, a.inflight, a.pid) == (M.DRAINING, 1, d.grants[1].pid)
    assert (b.state, b.queue_depth, b.switch_id) == (M.STOPPED, 1, view.switches[0].switch_id)
    assert view.switches[0].victims == ("a",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.state = M.READY  # type: ignore[misc]
    with pytest.raises(TypeError):
        view.models["c"] = a  # type: ignore[index]
    d.release(1)
    assert view.models["a"].state is M.DRAINING  # an old view never changes
    assert d.core.view().models["a"].state is M.EVICTING
