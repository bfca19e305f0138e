"""Node status (`GET /api/node`): what this node can do for each model now, read-only.

Owns: the frozen `NodeStatus` / `ModelStatus` records, `read_node_status` — the one
function that reads the scheduler's state for the fleet (the HAProxy agent, `/metrics/epp`
and the admin route all call it) — and their JSON and endpoint-picker forms.
Does not: change anything. It sends the scheduler no message, so reading it never wakes a
model, resets a TTL (`last_used_at` is only read) or takes a lease. It reads the core
between awaits on the loop thread (the owner task mutates it only inside its own steps,
so a read sees one consistent state), like the status page does.

"Can host now" asks placement the scheduler's own question — could this model be brought
up now — with two differences: every busy model (in-flight or queued requests) counts as
pinned, so the answer is "without evicting a pinned or busy model", and min_active_secs
is ignored (it only delays a victim by seconds).
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gpumux.core.placement import Tenant, admit
from gpumux.core.states import DaemonState, ModelState
from gpumux.scheduler.state.core import SchedulerCore
from gpumux.scheduler.state.slots import Slot
from gpumux.telemetry.epp import EppSnapshot
from gpumux.telemetry.resources import Resources

M = ModelState
#: Coming up: a request sent now is served by this bring-up, not by a new one.
COMING_UP = frozenset({M.STARTING, M.WAKING})
#: States whose way back to READY is a cold start (learned as `cold_start`).
COLD_STATES = frozenset({M.STOPPED, M.STOPPING, M.FAILED, M.STARTING})


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

    core: SchedulerCore  # read only (the SchedulerView replaces it)
    capacity: Mapping[int, int]  # GPU bytes per index, as the scheduler was built with
    resources: Resources
    daemon_state: Callable[[], DaemonState]
    clock: Callable[[], float]  # the scheduler's clock (loop time)
    name: str = dataclasses.field(default_factory=socket.gethostname)


def read_node_status(src: NodeSources) -> NodeStatus:
    """The node's status now. The only reader of scheduler state for the fleet."""
    core = src.core
    now = src.clock()
    tenants = {
        alias: _as_placement_sees_it(slot, _wake_cost(core.costs.op_cost, slot))
        for alias, slot in core.slots.items()
    }
    models = {}
    for alias, slot in core.slots.items():
        blocked, refused = _judge(slot, core.shutting_down, core.pinned, tenants, src.capacity, now)
        models[alias] = ModelStatus(
            model=alias,
            state=slot.state,
            queue_depth=len(slot.queue),
            inflight=len(slot.leases),
            max_concurrency=slot.config.max_num_seqs,
            wake_cost_secs=_wake_cost(core.costs.op_cost, slot),
            blocked=blocked,
            refused=refused,
        )
    resources = src.resources
    return NodeStatus(
        node=src.name,
        daemon_state=src.daemon_state(),
        mode=core.mode,
        pinned=core.pinned,
        models=MappingProxyType(models),
        gpus=tuple(GpuFree(g.index, g.total_bytes, g.free_bytes) for g in resources.gpus),
        host_available_bytes=resources.host_available_bytes,
        host_total_bytes=resources.host_total_bytes,
    )


def _wake_cost(op_cost: Callable[[str, str, str], float], slot: Slot) -> float:
    if slot.state is M.READY:
        return 0.0
    op = "cold_start" if slot.state in COLD_STATES else "wake"
    return op_cost(slot.alias, op, str(slot.eviction))


def _as_placement_sees_it(slot: Slot, wake_cost_secs: float) -> Tenant:
    tenant = slot.tenant(min_active_secs=0.0, wake_cost_secs=wake_cost_secs)
    # A busy model is never a victim here: bringing another model up must not cost it.
    return dataclasses.replace(tenant, pinned=True) if not slot.idle else tenant


def _judge(
    slot: Slot,
    shutting_down: bool,
    pinned: str | None,
    tenants: Mapping[str, Tenant],
    capacity: Mapping[int, int],
    now: float,
) -> tuple[str, str]:
    """(why `slot` cannot be served now without evicting a pinned or busy model, why a
    request for it would not even wait); "" where it can."""
    never = ""
    if shutting_down:
        never = "the node is shutting down"
    elif len(slot.queue) >= slot.config.max_queue:
        never = "its queue is full"
    elif slot.state is M.READY or slot.state in COMING_UP:
        return "", ""
    elif pinned is not None and pinned != slot.alias:
        never = f"manual mode: only `{pinned}` is woken"
    elif slot.state is M.FAILED and (slot.retry_not_before is None or now < slot.retry_not_before):
        never = f"failed: {slot.last_error}" if slot.last_error else "failed"
    if never:
        return never, never
    admission = admit(slot.alias, tenants, capacity, now)
    if admission.fits_now or admission.victims:
        return "", ""
    if admission.impossible:
        return admission.impossible, admission.impossible
    # Busy models hold the memory: a request waits until the policy drains one of them.
    # (No victims and no reason: evictions already under way make room.)
    return admission.reason, ""


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
