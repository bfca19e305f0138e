"""Config reload in the scheduler core: added, removed, changed and untouched models."""

from __future__ import annotations

from typing import Any

import pytest

from gpumux.core.config import Config
from gpumux.core.errors import ModelNotFound
from gpumux.core.eviction import Step
from gpumux.core.states import ModelState
from gpumux.scheduler.inputs import AdminMode, AdminRestart, BeginShutdown, ForceStop, Reload
from gpumux.scheduler.messages import AdminRefusal, AdminReply, Mode, Note, OpKind
from tests.support.scheduler import Driver, make_config

pytestmark = pytest.mark.unit


def reloaded(config: Config, **changes: Any) -> Config:
    raw = config.model_dump(mode="json")
    models = raw["models"]
    for alias, entry in changes.items():
        if entry is None:
            del models[alias]
        else:
            models[alias] = {**models.get(alias, {}), **entry}
    return Config.model_validate(raw)


def reload(d: Driver, config: Config) -> AdminReply:
    return d.answer(Reload(config))


def test_added_model_gets_a_slot_and_serves() -> None:
    """A model added by a reload is routable at once and cold-starts on demand."""
    d = Driver(make_config(util=0.4))
    new = reloaded(d.config, c={"model_path": "m/c", "port": 8200})
    assert reload(d, new).data["added"] == ["c"]
    d.submit(1, "c")
    assert d.state("c") is ModelState.STARTING
    d.finish("c")
    assert d.granted == [1]


def test_removed_model_drains_stops_then_disappears() -> None:
    """A removed model refuses new requests, finishes in-flight ones, stops, and is dropped."""
    d = Driver(make_config(util=0.4))
    d.submit(1, "a")
    d.finish("a")
    reply = reload(d, reloaded(d.config, a=None))
    assert reply.data["removed"] == ["a"]
    assert d.state("a") is ModelState.DRAINING  # lease 1 is still in flight
    d.submit(2, "a")
    assert isinstance(d.rejected[2], ModelNotFound)
    d.release(1)
    stop = d.pending_op("a")
    assert stop.op.steps == (Step.STOP,)
    d.finish("a")
    assert "a" not in d.core.models.slots
    assert any(isinstance(c, Note) and c.event == "model_removed" for c in d.log)


def test_changed_model_restarts_with_new_config_and_keeps_its_queue() -> None:
    """A changed model is stopped and comes back with the new config; queued requests wait."""
    d = Driver(make_config(util=0.4))
    d.submit(1, "a")
    d.finish("a")
    d.release(1)
    new = reloaded(d.config, a={"extra_args": ["--gpu-memory-utilization", "0.3"]})
    assert reload(d, new).data["changed"] == ["a"]
    stop = d.pending_op("a")
    assert stop.op.steps == (Step.STOP,)
    d.submit(2, "a")  # queued while it restarts
    d.finish("a")
    assert d.slot("a").config.gpu_memory_utilization == 0.3
    assert d.state("a") is ModelState.STARTING
    d.finish("a")
    assert d.granted == [1, 2]


def test_untouched_model_keeps_serving_through_a_reload() -> None:
    """A model the reload does not touch keeps its process, state and leases."""
    d = Driver(make_config(util=0.4))
    d.submit(1, "b")
    d.finish("b")
    pid = d.slot("b").pid
    reply = reload(d, reloaded(d.config, a=None, c={"model_path": "m/c", "port": 8300}))
    assert reply.data == {"added": ["c"], "removed": ["a"], "changed": [], "retuned": []}
    assert d.state("b") is ModelState.READY
    assert d.slot("b").pid == pid
    assert not d.ops
    d.submit(2, "b")
    assert d.granted == [1, 2]


def test_a_restart_waiting_for_its_stop_is_answered_when_the_model_is_removed() -> None:
    """Restart, then a reload removes the model before its stop ends: the restart is
    refused at once and the removal completes (it used to re-queue a forced switch for a
    model whose slot was then deleted, and the scheduler step raised KeyError)."""
    d = Driver(make_config(util=0.4))
    d.submit(1, "a")
    d.finish("a")
    d.release(1)
    assert d.admin(AdminRestart("a")) is None  # answered once it is back up
    assert d.pending_op("a").op.kind is OpKind.STOP
    reload(d, reloaded(d.config, a=None))
    restart = d.replies()[0]
    assert restart.refusal is AdminRefusal.UNKNOWN_MODEL
    d.finish("a")
    assert "a" not in d.core.models.slots
    d.tick()
    assert not d.ops


def test_a_lease_released_after_shutdown_removed_its_model_is_forgotten() -> None:
    """Shutdown's force stop drops leases, so a removed model may go while a request still
    holds a lease on it; that request's release must not break the scheduler step."""
    d = Driver(make_config(util=0.4))
    d.submit(1, "a")
    d.finish("a")
    reload(d, reloaded(d.config, a=None))
    d.send(BeginShutdown())
    d.send(ForceStop())
    while d.ops:
        d.finish(next(iter(d.ops.values())).op.model)
    assert "a" not in d.core.models.slots
    d.release(1)
    assert not d.core.queues.tickets


def test_manual_mode_refuses_a_model_on_its_way_out() -> None:
    """Pinning a removed model would queue a forced switch for a slot about to be deleted."""
    d = Driver(make_config(util=0.4))
    d.submit(1, "a")
    d.finish("a")
    reload(d, reloaded(d.config, a=None))
    assert d.answer(AdminMode(Mode.MANUAL, "a")).refusal is AdminRefusal.UNKNOWN_MODEL
    assert d.core.models.pinned is None
    d.release(1)
    d.finish("a")
    assert "a" not in d.core.models.slots
