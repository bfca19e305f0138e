"""Node status (`GET /api/node`): what this node can do for each model now, read-only.

Owns: the frozen `NodeStatus` / `ModelStatus` records, `read_node_status` — the one
function that builds the fleet's answer (the HAProxy agent, `/metrics/epp` and the admin
route all call it) from the scheduler's published view — and their JSON and
endpoint-picker forms.
Does not: change anything or judge anything. It sends the scheduler no message, so reading
it never wakes a model, resets a TTL or takes a lease; whether a model can be hosted now is
judged inside the owner (`scheduler/state/hosting.py`) and published with the view.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gpumux.core.states import DaemonState, ModelState
from gpumux.scheduler.view import SchedulerView
from gpumux.telemetry.epp import EppSnapshot
from gpumux.telemetry.resources import Resources

M = ModelState


@dataclass(frozen=True)
class ModelStatus:
    model: str
    state: ModelState
    queue_depth: int
    inflight: int
    max_concurrency: int  # requests the backend batches at once (`max_num_seqs`)
    wake_cost_secs: float  # learned seconds from this state to ready (0 when ready)
    blocked: str  # why it cannot be served now without evicting a pinned or busy model
    refused: str  # why a request sent now would not even wait for it (full, failed, ...)

    @property
    def can_host_now(self) -> bool:
        """Ready, coming up, or can come up without evicting a pinned or busy model."""
        return not self.blocked

    @property
    def can_queue(self) -> bool:
        """A request sent now would wait its turn here rather than be refused."""
        return not self.refused

    @property
    def saturated(self) -> bool:
        return self.queue_depth > 0 or self.inflight >= self.max_concurrency


@dataclass(frozen=True)
class GpuFree:
    index: int
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class NodeStatus:
    node: str
    daemon_state: DaemonState
    mode: str  # "auto", or "manual" with `pinned` the only model woken
    pinned: str | None
    models: Mapping[str, ModelStatus]
    gpus: tuple[GpuFree, ...]
    host_available_bytes: int | None
    host_total_bytes: int | None

    @property
    def serving(self) -> bool:
        return self.daemon_state is DaemonState.SERVING


@dataclass(frozen=True)
class NodeSources:
    """What node status reads; each part is owned elsewhere."""

    view: Callable[[], SchedulerView]  # the scheduler's frozen view, as of its last step
    resources: Resources
    daemon_state: Callable[[], DaemonState]
    name: str = dataclasses.field(default_factory=socket.gethostname)


def read_node_status(src: NodeSources) -> NodeStatus:
    """The node's status now. The only reader of scheduler state for the fleet."""
    view = src.view()
    models = {
        alias: ModelStatus(
            model=alias,
            state=m.state,
            queue_depth=m.queue_depth,
            inflight=m.inflight,
            max_concurrency=m.max_concurrency,
            wake_cost_secs=m.wake_cost_secs,
            blocked=m.blocked,
            refused=m.refused,
        )
        for alias, m in view.models.items()
    }
    resources = src.resources
    return NodeStatus(
        node=src.name,
        daemon_state=src.daemon_state(),
        mode=view.mode.value,
        pinned=view.pinned,
        models=MappingProxyType(models),
        gpus=tuple(GpuFree(g.index, g.total_bytes, g.free_bytes) for g in resources.gpus),
        host_available_bytes=resources.host_available_bytes,
        host_total_bytes=resources.host_total_bytes,
    )


def node_json(status: NodeStatus) -> dict[str, object]:
    """The `GET /api/node` document."""
    return {
        "node": status.node,
        "state": status.daemon_state.value,
        "mode": status.mode,
        "pinned": status.pinned,
        "models": {
            alias: {
                "state": m.state.value,
                "queue_depth": m.queue_depth,
                "inflight": m.inflight,
                "max_concurrency": m.max_concurrency,
                "saturated": m.saturated,
                "wake_cost_secs": round(m.wake_cost_secs, 3),
                "can_host_now": m.can_host_now,
                "blocked": m.blocked or None,
                "can_queue": m.can_queue,
            }
            for alias, m in status.models.items()
        },
        "gpus": [
            {"index": g.index, "total_bytes": g.total_bytes, "free_bytes": g.free_bytes}
            for g in status.gpus
        ],
        "host_memory": {
            "available_bytes": status.host_available_bytes,
            "total_bytes": status.host_total_bytes,
        },
    }


def epp_snapshot(status: NodeStatus) -> EppSnapshot:
    """What llm-d's endpoint picker reads, from the node status (`/metrics/epp`)."""
    models = status.models.values()
    return EppSnapshot(
        waiting=sum(m.queue_depth for m in models),
        running=sum(m.inflight for m in models),
        running_models=tuple(m.model for m in models if m.state is M.READY),
        waiting_models=tuple(m.model for m in models if m.queue_depth),
        max_models=len(status.models),
    )
