"""The scheduler's mutable records: one `Slot` per model, one `Ticket` per request, switches.

Owns: the shape of the per-model, per-request and per-switch records the core's parts
share, and the helpers that derive placement tenants and policy views from a slot.
Does not: change state on its own; the core's parts mutate these records, lifecycles
always through `Models.set_state` (`states.transition()`). What only one part needs
(host-RAM pins, the warm-up pass, the forced-switch queue) lives in that part. Pure.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from gpumux.core.config import EvictionConfig, ModelConfig, WeightStrategy
from gpumux.core.eviction import evict_plan
from gpumux.core.placement import Tenant
from gpumux.core.states import PROCESS_ALIVE_STATES, ModelState, RequestState
from gpumux.policy.base import ModelView
from gpumux.scheduler.messages import Operation


@dataclass
class Ticket:
    ticket: int
    model: str
    enqueued_at: float
    deadline: float
    state: RequestState = RequestState.QUEUED


@dataclass
class Switch:
    """One decision to bring `target` up, with the victims evicted to make room."""

    switch_id: int
    target: str
    started_at: float
    victims: list[str] = field(default_factory=list)
    phases: list[tuple[str, float]] = field(default_factory=list)
    cold: bool = False


@dataclass
class Slot:
    alias: str
    config: ModelConfig
    eviction: EvictionConfig
    state: ModelState = ModelState.STOPPED
    queue: deque[Ticket] = field(default_factory=deque)
    leases: set[int] = field(default_factory=set)
    op: Operation | None = None
    op_started_at: float = 0.0
    pid: int | None = None
    ready_since: float | None = None
    last_used_at: float = 0.0
    drain_deadline: float | None = None
    drain_started_at: float | None = None
    stopping_from: ModelState | None = None  # while STOPPING: the state whose memory it holds
    #: While EVICTING past a step that freed its GPU memory (`policy.overlap`): the state
    #: whose footprint it keeps while the rest of its eviction runs.
    freed_to: ModelState | None = None
    drain_for: int | None = None  # the switch this drain serves (None: warmup / admin)
    #: The eviction this drain ends in when it is not the model's own (an idle step's).
    drain_eviction: EvictionConfig | None = None
    switch_id: int | None = None  # the switch bringing this model up
    evicted_weights: WeightStrategy | None = None  # how the weights left (for the wake plan)
    #: This process has slept at level 1: vLLM's pinned backup (torch's host cache) stays
    #: allocated until the process ends, awake or not (design §8). Level 2, a checkpoint
    #: or a stop gives it back.
    l1_backup: bool = False
    auto: bool = False  # `eviction: "auto"`: each eviction's level is chosen when it starts
    evicted_with: EvictionConfig | None = None  # the level of its last eviction (wake costs)
    start_failures: int = 0
    retry_not_before: float | None = None
    last_error: str = ""
    restarts: int = 0
    residual_bytes: int = 0

    @property
    def resting_state(self) -> ModelState:
        return evict_plan(self.eviction)[1]

    @property
    def _freed_to_while_evicting(self) -> ModelState | None:
        return self.freed_to if self.state is ModelState.EVICTING else None

    @property
    def process_alive(self) -> bool:
        return self.state in PROCESS_ALIVE_STATES

    @property
    def idle(self) -> bool:
        return not self.leases and not self.queue

    def tenant(
        self,
        *,
        min_active_secs: float,
        wake_cost_secs: float,
        pinned: bool = False,
        evict_cost_secs: float = 0.0,
        reuse_rate: float = 0.0,
    ) -> Tenant:
        ready_since = self.ready_since if self.ready_since is not None else 0.0
        return Tenant(
            alias=self.alias,
            gpus=self.config.gpu_indices,
            utilization=self.config.gpu_memory_utilization,
            state=self.state,
            holds=self.stopping_from or self._freed_to_while_evicting,
            residual_bytes=self.residual_bytes,
            resting_state=self.resting_state,
            idle=self.idle,
            last_used_at=self.last_used_at,
            evictable_at=ready_since + min_active_secs,
            wake_cost_secs=wake_cost_secs,
            pinned=pinned,
            evict_cost_secs=evict_cost_secs,
            reuse_rate=reuse_rate,
        )

    def view(
        self,
        *,
        wake_cost_secs: float,
        evict_cost_secs: float,
        fits_now: bool,
        drain_cost_secs: float = 0.0,
        arrival_rate: float = 0.0,
        next_arrival_at: float = math.inf,
    ) -> ModelView:
        return ModelView(
            alias=self.alias,
            state=self.state,
            queued=len(self.queue),
            oldest_enqueued_at=self.queue[0].enqueued_at if self.queue else None,
            inflight=len(self.leases),
            ready_since=self.ready_since,
            last_used_at=self.last_used_at,
            retry_not_before=self.retry_not_before,
            wake_cost_secs=wake_cost_secs,
            evict_cost_secs=evict_cost_secs,
            drain_cost_secs=drain_cost_secs,
            max_num_seqs=self.config.max_num_seqs,
            fits_now=fits_now,
            gpus=self.config.gpu_indices,
            switch_pending=self.switch_id is not None,
            priority=self.config.priority,
            arrival_rate=arrival_rate,
            next_arrival_at=next_arrival_at,
        )
