"""What the scheduler core accepts: one typed message per kind of input.

Owns: the inputs — a request arrived, was released or cancelled; an operation reported a
phase, freed its model's GPU memory before its last step, or finished; a process exited,
failed its health checks or was found asleep; a host-RAM reading; a tick; shutdown; and
the operator's commands (`AdminCommand`), which travel wrapped in `Admin` with the id
their `AdminReply` will carry.
Does not: do anything. The runner's inbox and the simulator's event loop carry these to
`SchedulerCore.handle`, so real and virtual time feed the core the same way. Pure data.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpumux.core.config import Config
from gpumux.core.states import ModelState
from gpumux.scheduler.messages import Mode, OpOutcome

# ---- requests ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Submit:
    """A request for `model` arrived; it will be granted, queued or rejected."""

    ticket: int
    model: str


@dataclass(frozen=True)
class Release:
    """A granted request finished (or its client left mid-response)."""

    ticket: int


@dataclass(frozen=True)
class Cancel:
    """The client left while queued; if it was granted meanwhile, this releases it."""

    ticket: int


# ---- operations and processes -----------------------------------------------------------


@dataclass(frozen=True)
class OpDone:
    outcome: OpOutcome


@dataclass(frozen=True)
class OpPhase:
    """An operation moved its model to an intermediate state (a wake fell back to cold)."""

    op_id: int
    state: ModelState


@dataclass(frozen=True)
class GpuFreed:
    """An eviction's first step freed its model's GPU memory (down to what a model in
    `holds` keeps there); its later steps (a suspend, a CRIU dump) go on in the background.

    `phase_secs` are the phases measured up to this point: the part of the eviction a
    switch waits for when its wake overlaps the rest (`policy.overlap`).
    """

    op_id: int
    holds: ModelState
    phase_secs: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class ProcessExited:
    model: str
    pid: int
    code: int


@dataclass(frozen=True)
class HealthFailed:
    """A live backend failed its health probes repeatedly (or a 5xx streak was confirmed)."""

    model: str
    pid: int


@dataclass(frozen=True)
class FoundAsleep:
    """A ready backend says it is asleep (someone called its /sleep)."""

    model: str
    pid: int


@dataclass(frozen=True)
class HostMemory:
    """A fresh host-RAM reading (the core keeps its host budget with it)."""

    available_bytes: int


# ---- time and lifecycle -----------------------------------------------------------------


@dataclass(frozen=True)
class Tick:
    """Nothing happened, but time passed (a deadline is due)."""


@dataclass(frozen=True)
class BeginShutdown:
    """Refuse new work, fail the queues, stop every tree once in-flight requests end."""


@dataclass(frozen=True)
class ForceStop:
    """Shutdown's drain deadline passed: stop trees even with requests in flight."""


# ---- the operator's commands ------------------------------------------------------------


@dataclass(frozen=True)
class AdminSwitch:
    """Make `model` ready now: drain and evict whoever must leave, ignoring min_active."""

    model: str


@dataclass(frozen=True)
class AdminEvict:
    """Drain and evict `model`; a held (pinned) model only with `force`."""

    model: str
    force: bool = False


@dataclass(frozen=True)
class AdminPin:
    """Hold `model` against eviction (`pinned`), or let it go."""

    model: str
    pinned: bool


@dataclass(frozen=True)
class AdminRestart:
    model: str


@dataclass(frozen=True)
class AdminReset:
    """Forget `model`'s failures (a failed model becomes stopped and may start again)."""

    model: str


@dataclass(frozen=True)
class AdminMode:
    """`manual` pins `model` (or the ready one); `auto` releases the pin."""

    mode: Mode
    model: str | None = None


@dataclass(frozen=True)
class Reload:
    """Apply a new model table (only `models` of `config` is taken)."""

    config: Config


AdminCommand = AdminSwitch | AdminEvict | AdminPin | AdminRestart | AdminReset | AdminMode | Reload


@dataclass(frozen=True)
class Admin:
    """An operator's command and the id its one `AdminReply` will carry."""

    command: AdminCommand
    reply: int


Input = (
    Submit
    | Release
    | Cancel
    | OpDone
    | OpPhase
    | GpuFreed
    | ProcessExited
    | HealthFailed
    | FoundAsleep
    | HostMemory
    | Tick
    | BeginShutdown
    | ForceStop
    | Admin
)
