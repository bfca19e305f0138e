"""The vocabulary between the scheduler core and whoever runs it: operations and commands.

Owns: `Operation` (one evict or wake of one model, as a step sequence), `OpOutcome`
(what the orchestrator reports back), the commands the core emits (grant, stock standing
grants, reject, start an operation, answer an admin command, and observations for metrics
and logs), and the enums they carry (`Mode`, `AdminRefusal`). The inputs the core
accepts are in `inputs`.
Does not: do anything, or know HTTP (`admin/` maps an `AdminRefusal` to a status code).
Pure data shared by the core, the async runner and the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from gpumux.core.config import EvictionConfig
from gpumux.core.errors import GpumuxError
from gpumux.core.eviction import Step
from gpumux.core.states import ModelState


class OpKind(StrEnum):
    WAKE = "wake"  # make the model ready (cold start, resume, restore, wake_up)
    EVICT = "evict"  # drain is done; run the eviction steps
    STOP = "stop"  # kill the tree (shutdown, admin, or deeper eviction)


@dataclass(frozen=True)
class Operation:
    op_id: int
    model: str
    kind: OpKind
    steps: tuple[Step, ...]
    eviction: EvictionConfig
    switch_id: int | None = None
    abort_inflight: bool = False  # drain gave up (or was disabled): sleep with mode=abort
    resting_state: ModelState = ModelState.READY  # where a successful op leaves the model


class OpResult(StrEnum):
    OK = "ok"
    FALLBACK_COLD = "fallback_cold"  # the wake failed; a cold start succeeded instead
    FALLBACK_STOP = "fallback_stop"  # an eviction step failed; the tree was killed
    FAILED = "failed"


@dataclass(frozen=True)
class OpOutcome:
    op_id: int
    result: OpResult
    pid: int | None = None  # root pid of the live tree afterwards, if any
    error: str = ""
    phase_secs: tuple[tuple[str, float], ...] = ()  # (phase, seconds) as measured


# Commands the core emits. The runner executes them in order.


@dataclass(frozen=True)
class Grant:
    """`ticket` may send its request to `model`'s backend, the process `pid` on `port`."""

    ticket: int
    model: str
    pid: int | None = None
    port: int | None = None


@dataclass(frozen=True)
class Stock:
    """`model`'s standing grants changed: `grants` join the shelf its requests take from,
    after every grant already there is withdrawn when `replace` (the model stopped
    qualifying, or its process changed). The runner carries it out in the same step."""

    model: str
    grants: tuple[Grant, ...]
    replace: bool = False

    def onto(self, shelves: dict[str, list[Grant]]) -> None:
        """Carry this out on `shelves` (model → the grants requests may take)."""
        shelf = shelves.setdefault(self.model, [])
        if self.replace:
            shelf.clear()
        shelf.extend(self.grants)


@dataclass(frozen=True)
class Reject:
    ticket: int
    error: GpumuxError


@dataclass(frozen=True)
class StartOp:
    op: Operation


@dataclass(frozen=True)
class StateChanged:
    model: str
    before: ModelState
    after: ModelState


@dataclass(frozen=True)
class SwitchFinished:
    switch_id: int
    target: str
    victims: tuple[str, ...]
    strategy: str
    outcome: str  # ok | fallback_cold | failed | cancelled
    duration_secs: float
    phase_secs: tuple[tuple[str, float], ...] = ()

    def phase_totals(self) -> dict[str, float]:
        """Seconds per phase, summed (a discard wake has several `wake` steps)."""
        totals: dict[str, float] = {}
        for phase, secs in self.phase_secs:
            totals[phase] = totals.get(phase, 0.0) + secs
        return totals


@dataclass(frozen=True)
class Restarted:
    model: str
    reason: str  # crash | start_failed | wake_failed


@dataclass(frozen=True)
class QueueWait:
    model: str
    wait_secs: float


@dataclass(frozen=True)
class Note:
    """A structured log event the runner emits (the core itself never logs)."""

    event: str
    fields: dict[str, object] = field(default_factory=dict)


class Mode(StrEnum):
    AUTO = "auto"  # the policy chooses what to wake
    MANUAL = "manual"  # one pinned model: never evicted, the only one woken


class AdminRefusal(StrEnum):
    """Why an admin command was not carried out (`admin/` maps each to an HTTP answer)."""

    UNKNOWN_MODEL = "unknown_model"  # not configured, or removed by a reload
    BUSY = "busy"  # the model's state does not allow it now (not ready, mid-operation)
    BAD_REQUEST = "bad_request"  # the command cannot mean anything (manual with no model)
    SHUTTING_DOWN = "shutting_down"
    START_FAILED = "start_failed"  # the model did not come up


@dataclass(frozen=True)
class AdminReply:
    """The answer to an admin command (forced switch, evict, restart, ...)."""

    reply: int
    detail: str
    refusal: AdminRefusal | None = None  # None: done
    data: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.refusal is None


Command = (
    Grant
    | Stock
    | Reject
    | StartOp
    | StateChanged
    | SwitchFinished
    | Restarted
    | QueueWait
    | Note
    | AdminReply
)
