"""The scheduler as the rest of gpumux sees it: a frozen view, published after each step.

Owns: the shape of what edges may read — per model its state, process, queue depth,
in-flight count, operation, switch, pin, failures and host-RAM estimate; the switches in
progress; the mode; shutdown progress; learned costs; the host budget's figures.
Does not: change, or reach back into the core. Every field is immutable (tuples and
read-only mappings), so a reader holding an old view sees a consistent past state, never
a half-made decision. The proxy, the health monitor, the admin status and the reloader
read this, never the core (whose state has exactly one owner: the runner's task). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gpumux.core.states import ModelState
from gpumux.scheduler.messages import Mode, OpKind


@dataclass(frozen=True, slots=True)
class ModelStatus:
    alias: str
    state: ModelState
    pid: int | None  # root pid of the live tree, as the core knows it
    port: int
    queue_depth: int
    inflight: int
    operation: OpKind | None  # the operation running on it, if any
    switch_id: int | None  # the switch bringing it up, if any
    pinned: bool  # never a victim: held (config or admin pin), or the manual-mode model
    ready_since: float | None  # scheduler clock
    restarts: int
    start_failures: int
    retry_not_before: float | None  # scheduler clock
    last_error: str
    eviction: str  # how it leaves the GPU next ("offload+keep_running", ...)
    gpus: tuple[int, ...]
    gpu_memory_utilization: float
    host_pin_bytes: int | None  # host RAM it pins asleep at level 1 or suspended, if known
    idle_step_at: float | None = None  # scheduler clock: its next idle-TTL step, if any
    max_concurrency: int = 1  # requests served at once (`max_concurrency`, else `max_num_seqs`)
    wake_cost_secs: float = 0.0  # learned seconds from this state to READY (0 when ready)
    blocked: str = ""  # why it cannot be served now without evicting a pinned or busy model
    refused: str = ""  # why a request sent now would not even wait for it
    #: Host RAM it pins right now: asleep at level 1 or suspended, or awake keeping the
    #: pinned backup of an earlier level-1 sleep (vLLM frees it only at process exit).
    host_pinned_bytes: int = 0
    level1_backup: bool = False  # its process has slept at level 1 (the backup is kept)


@dataclass(frozen=True, slots=True)
class SwitchStatus:
    switch_id: int
    target: str
    victims: tuple[str, ...]
    started_at: float  # scheduler clock
    phases: tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class HostBudgetStatus:
    reserve_bytes: int
    available_bytes: int | None  # the latest reading, if any


@dataclass(frozen=True, slots=True)
class SchedulerView:
    models: Mapping[str, ModelStatus]
    switches: tuple[SwitchStatus, ...]
    mode: Mode
    pinned: str | None
    shutting_down: bool
    all_stopped: bool  # no live tree and no operation running
    costs: Mapping[str, Mapping[str, float]]  # `SwitchCosts.to_dict()`, read-only
    host: HostBudgetStatus
    held: tuple[str, ...] = ()  # pinned against eviction (config `pinned`, admin pin)
    preload: Mapping[str, str] = field(default_factory=dict)  # model -> pending|started|skipped
