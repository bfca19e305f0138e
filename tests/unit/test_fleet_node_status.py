"""Node status from a real scheduler core driven synchronously: what it says, and that
reading it changes nothing (no wake, no lease, no `last_used_at` touched)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from gpumux.admin.node import NodeSources, epp_snapshot, node_json, read_node_status
from gpumux.core.config import Config
from gpumux.core.states import DaemonState, ModelState
from gpumux.gpu.probe import GpuMemory, NoProbe
from gpumux.policy.registry import make_policy
from gpumux.scheduler.inputs import (
    Admin,
    AdminMode,
    BeginShutdown,
    OpDone,
    Release,
    Submit,
    Tick,
)
from gpumux.scheduler.messages import Command, Mode, OpOutcome, OpResult, StartOp
from gpumux.scheduler.state.core import SchedulerCore
from gpumux.telemetry.metrics import Metrics
from gpumux.telemetry.resources import Resources

pytestmark = pytest.mark.unit
GIB = 1024**3
M = ModelState


def make_core(util: float = 0.6, models: str = "ab") -> SchedulerCore:
    raw: dict[str, Any] = {
        "models": {
            name: {
                "model_path": f"m/{name}",
                "port": 8100 + i,
                "extra_args": ["--gpu-memory-utilization", str(util)],
                "max_num_seqs": 2,
            }
            for i, name in enumerate(models)
        },
        "policy": {"min_active_secs": 0},
        "supervision": {"max_start_failures": 1, "failed_retry_secs": 60},
    }
    config = Config.model_validate(raw)
    return SchedulerCore(config, make_policy(config.policy), {0: 80 * GIB})


class Node:
    """A core fed by hand, and the node status read from it."""

    def __init__(self, core: SchedulerCore) -> None:
        self.core = core
        self.now = 100.0
        self.state = DaemonState.SERVING
        self.ops: list[StartOp] = []
        resources = Resources(NoProbe(), Metrics())
        resources.gpus = (GpuMemory(0, 80 * GIB, 30 * GIB),)
        resources.host_available_bytes, resources.host_total_bytes = 8 * GIB, 16 * GIB
        self.sources = NodeSources(core.view, resources, lambda: self.state, name="n1")

    def feed(self, commands: list[Command]) -> None:
        self.ops += [c for c in commands if isinstance(c, StartOp)]

    def submit(self, ticket: int, model: str) -> None:
        self.feed(self.core.handle(Submit(ticket, model), self.now))

    def finish_ops(self, result: OpResult = OpResult.OK) -> None:
        while self.ops:
            op = self.ops.pop(0).op
            self.feed(self.core.handle(OpDone(OpOutcome(op.op_id, result, pid=1000)), self.now))

    def bring_up(self, model: str, ticket: int) -> None:
        self.submit(ticket, model)
        self.finish_ops()
        assert self.core.models.slots[model].state is M.READY

    def read(self) -> Any:
        return read_node_status(self.sources)


def test_a_cold_model_on_a_free_gpu_can_be_hosted_at_its_cold_start_cost() -> None:
    node = Node(make_core())
    status = node.read()
    a = status.models["a"]
    assert (a.state, a.can_host_now, a.blocked) == (M.STOPPED, True, "")
    assert a.wake_cost_secs == 30.0  # the cold-start prior until one is measured
    assert status.serving
    assert status.node == "n1"
    assert status.gpus[0].free_bytes == 50 * GIB
    assert (status.host_available_bytes, status.host_total_bytes) == (8 * GIB, 16 * GIB)


def test_ready_counts_inflight_and_saturates_at_its_concurrency() -> None:
    node = Node(make_core())
    node.bring_up("a", 1)
    a = node.read().models["a"]
    assert (a.inflight, a.wake_cost_secs, a.saturated) == (1, 0.0, False)
    node.submit(2, "a")
    assert node.read().models["a"].saturated  # max_num_seqs 2


def test_a_busy_model_is_never_evicted_for_another_an_idle_one_may_be() -> None:
    node = Node(make_core(util=0.6))
    node.bring_up("a", 1)  # holds lease 1: busy
    b = node.read().models["b"]
    assert not b.can_host_now
    assert "no evictable model" in b.blocked
    assert b.can_queue  # a request would wait for a to be drained
    node.feed(node.core.handle(Release(1), node.now))  # idle now: a could be evicted for b
    assert node.read().models["b"].can_host_now


def test_manual_mode_shutdown_and_failure_block_hosting() -> None:
    node = Node(make_core(util=0.3))
    node.bring_up("a", 1)
    node.feed(node.core.handle(Admin(AdminMode(Mode.MANUAL, "a"), 7), node.now))
    blocked = node.read().models["b"].blocked
    assert blocked == "manual mode: only `a` is woken"
    node.feed(node.core.handle(Admin(AdminMode(Mode.AUTO), 8), node.now))
    node.submit(2, "b")
    node.finish_ops(OpResult.FAILED)  # one failure is the limit here: failed, retry in 60 s
    b = node.read().models["b"]
    assert (b.state, b.can_host_now, b.can_queue) == (M.FAILED, False, False)
    node.now += 61
    node.feed(node.core.handle(Tick(), node.now))  # the view judges as of the last input
    assert node.read().models["b"].can_host_now  # the half-open retry may start it
    node.state = DaemonState.DRAINING
    node.feed(node.core.handle(BeginShutdown(), node.now))
    status = node.read()
    assert not status.serving
    assert all(m.blocked == "the node is shutting down" for m in status.models.values())


def test_reading_changes_nothing_in_the_core() -> None:
    node = Node(make_core())
    node.bring_up("a", 1)
    node.feed(node.core.handle(Release(1), node.now))
    before = [dataclasses.asdict(s) for s in node.core.models.slots.values()]
    tickets = dict(node.core.queues.tickets)
    node.now += 50
    for _ in range(20):
        node.read()
    assert [dataclasses.asdict(s) for s in node.core.models.slots.values()] == before
    assert node.core.queues.tickets == tickets


def test_json_and_endpoint_picker_forms() -> None:
    node = Node(make_core(util=0.3))
    node.bring_up("a", 1)
    node.submit(2, "b")  # b queued while it starts
    status = node.read()
    document = node_json(status)
    assert document["state"] == "serving"
    assert document["models"] == {
        "a": {
            "state": "ready",
            "queue_depth": 0,
            "inflight": 1,
            "max_concurrency": 2,
            "saturated": False,
            "wake_cost_secs": 0.0,
            "can_host_now": True,
            "blocked": None,
            "can_queue": True,
        },
        "b": {
            "state": "starting",
            "queue_depth": 1,
            "inflight": 0,
            "max_concurrency": 2,
            "saturated": True,
            "wake_cost_secs": 30.0,
            "can_host_now": True,
            "blocked": None,
            "can_queue": True,
        },
    }
    epp = epp_snapshot(status)
    assert (epp.waiting, epp.running, epp.max_models) == (1, 1, 2)
    assert (epp.running_models, epp.waiting_models) == (("a",), ("b",))
