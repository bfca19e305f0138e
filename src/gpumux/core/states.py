"""Every lifecycle in gpumux as an Enum plus a transition table, and the one guarded `transition()`.

Owns: `ModelState` (design §3), `RequestState` (one outcome per request) and
`DaemonState`, their edge tables, and `transition()` which rejects any edge not in the
table and reports accepted ones to an observer (the owner logs there).
Does not: hold state. Owners keep the current value and call `transition()`. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import TypeVar


class ModelState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    EVICTING = "evicting"
    SLEEPING = "sleeping"  # vLLM sleep level 1/2, process alive
    SUSPENDED = "suspended"  # cuda-checkpoint: CUDA state in host memory, process alive
    CHECKPOINTED = "checkpointed"  # CRIU image, no process
    WAKING = "waking"
    STOPPING = "stopping"
    FAILED = "failed"


M = ModelState

MODEL_TRANSITIONS: Mapping[ModelState, frozenset[ModelState]] = {
    M.STOPPED: frozenset({M.STARTING, M.FAILED, M.CHECKPOINTED}),
    # STARTING -> STOPPED: the start failed and will be retried after a backoff.
    M.STARTING: frozenset({M.READY, M.STOPPED, M.STOPPING, M.FAILED}),
    # READY -> SLEEPING: reconciliation, the backend was found asleep behind our back.
    M.READY: frozenset({M.DRAINING, M.EVICTING, M.STOPPING, M.STOPPED, M.SLEEPING}),
    # DRAINING -> READY: the switch was cancelled (demand vanished) before evicting.
    M.DRAINING: frozenset({M.EVICTING, M.READY, M.STOPPING, M.STOPPED}),
    # EVICTING -> STOPPED also covers "the weights step failed, so the tree was killed".
    M.EVICTING: frozenset({M.SLEEPING, M.SUSPENDED, M.CHECKPOINTED, M.STOPPED, M.STOPPING}),
    # SLEEPING -> EVICTING: a deeper eviction (e.g. suspend a sleeper under memory pressure).
    M.SLEEPING: frozenset({M.WAKING, M.EVICTING, M.STOPPING, M.STOPPED}),
    M.SUSPENDED: frozenset({M.WAKING, M.STOPPING, M.STOPPED}),
    M.CHECKPOINTED: frozenset({M.WAKING, M.STOPPED}),
    # WAKING -> STARTING: the wake failed, the tree was killed, and a cold start follows.
    M.WAKING: frozenset({M.READY, M.STARTING, M.STOPPED, M.STOPPING, M.FAILED}),
    M.STOPPING: frozenset({M.STOPPED}),
    M.FAILED: frozenset({M.STOPPED}),
}

#: States in which the model holds its full GPU reservation.
AWAKE_STATES = frozenset({M.STARTING, M.READY, M.DRAINING, M.EVICTING, M.WAKING, M.STOPPING})
#: States with a live process tree gpumux supervises.
PROCESS_ALIVE_STATES = AWAKE_STATES | {M.SLEEPING, M.SUSPENDED}
#: States a wake can start from, without a cold start.
WAKEABLE_STATES = frozenset({M.SLEEPING, M.SUSPENDED, M.CHECKPOINTED})


class RequestState(StrEnum):
    """A proxied request: exactly one terminal outcome."""

    QUEUED = "queued"
    #: Granted ahead by the scheduler task to no request yet (a standing grant): the
    #: first request for its model takes it without asking, or the task withdraws it.
    STANDING = "standing"
    GRANTED = "granted"
    RELEASED = "released"  # terminal: served (or the client left mid-stream)
    REJECTED = "rejected"  # terminal: 429/503 before service
    TIMED_OUT = "timed_out"  # terminal: 504 queue_timeout
    CANCELLED = "cancelled"  # terminal: the client left while queued
    WITHDRAWN = "withdrawn"  # terminal: a standing grant no request took


R = RequestState
REQUEST_TRANSITIONS: Mapping[RequestState, frozenset[RequestState]] = {
    R.QUEUED: frozenset({R.GRANTED, R.REJECTED, R.TIMED_OUT, R.CANCELLED}),
    R.STANDING: frozenset({R.GRANTED, R.WITHDRAWN}),
    R.GRANTED: frozenset({R.RELEASED}),
    R.RELEASED: frozenset(),
    R.REJECTED: frozenset(),
    R.TIMED_OUT: frozenset(),
    R.CANCELLED: frozenset(),
    R.WITHDRAWN: frozenset(),
}


class DaemonState(StrEnum):
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


D = DaemonState
DAEMON_TRANSITIONS: Mapping[DaemonState, frozenset[DaemonState]] = {
    D.STARTING: frozenset({D.SERVING, D.DRAINING, D.STOPPED}),
    D.SERVING: frozenset({D.DRAINING}),
    D.DRAINING: frozenset({D.STOPPED}),
    D.STOPPED: frozenset(),
}


class IllegalTransition(RuntimeError):
    def __init__(self, what: str, current: StrEnum, target: StrEnum) -> None:
        super().__init__(f"{what}: illegal transition {current.value} -> {target.value}")
        self.what = what
        self.current = current
        self.target = target


S = TypeVar("S", bound=StrEnum)
Observer = Callable[[str, StrEnum, StrEnum], None]


def transition(
    table: Mapping[S, frozenset[S]],
    current: S,
    target: S,
    *,
    what: str,
    observer: Observer | None = None,
) -> S:
    """Return `target` if `current -> target` is an edge of `table`; raise otherwise.

    `what` names the thing changing (e.g. "model llama"); the observer (the owner's
    logger) hears every accepted edge.
    """
    if target not in table[current]:
        raise IllegalTransition(what, current, target)
    if observer is not None:
        observer(what, current, target)
    return target
