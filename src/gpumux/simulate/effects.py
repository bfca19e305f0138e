"""The simulated world the real orchestrator acts on, and virtual time without a loop.

Owns: `SimEffects`, the `Effects` the simulator hands the real `Orchestrator`: each step
takes the step costs' seconds for it within its operation, fails when the `Faults`
plan says so, and keeps a fake pid per model the way the real effects keep a process
(a cold start or a restore makes a new one; a stop, a dump or a kill leaves none), and
which processes have slept at level 1 (so hold pinned host memory: only a process's
first level-1 sleep pays for pinning, design section 8; a new process starts over). A
stop, a kill of a live tree, or any step of an operation that gave up draining makes
the backend drop its in-flight requests; the engine is told, since it owns them.
`Elapse`, the one thing a simulated step awaits, and `advance`, which runs an
operation's coroutine up to its next `Elapse`: the engine schedules the rest of the
operation that many virtual seconds later, so no event loop and no clock are involved.
Does not: choose steps or fallbacks (the orchestrator does), keep time or requests (the
engine does), or decide anything. Pure.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Coroutine, Generator
from typing import cast

from gpumux.core.config import WeightStrategy
from gpumux.core.errors import StepFailed
from gpumux.core.eviction import Step
from gpumux.scheduler.messages import Operation, OpKind, OpOutcome
from gpumux.simulate.switch_model import StepCosts

#: Fake pids start here (clear of anything a reader might take for a real one).
FIRST_PID = 100_000
_NEW_TREE = (Step.COLD_START, Step.CRIU_RESTORE)
_NO_TREE = (Step.STOP, Step.CRIU_DUMP)


class Elapse:
    """Awaited by a simulated step: the operation waits `secs` of virtual time."""

    __slots__ = ("secs",)

    def __init__(self, secs: float) -> None:
        self.secs = secs

    def __await__(self) -> Generator[Elapse, None, None]:
        yield self


#: An operation in progress: the orchestrator's coroutine over `SimEffects`.
OpRun = Coroutine[Elapse, None, OpOutcome]


def advance(run: OpRun) -> OpOutcome | float:
    """Run the operation to its next wait: the seconds it now waits, or its outcome."""
    try:
        wait = run.send(None)
    except StopIteration as done:
        return cast(OpOutcome, done.value)
    return wait.secs


class SimEffects:
    """Implements `orchestrator.Effects` in virtual time."""

    def __init__(self, costs: StepCosts, on_abort: Callable[[str], None]) -> None:
        """`on_abort(model)`: the model's backend just dropped its in-flight requests."""
        self._costs = costs
        self._on_abort = on_abort
        self._ops: dict[str, Operation] = {}
        self._failures: dict[str, int] = {}
        self._pids: dict[str, int] = {}
        self._pinned: set[int] = set()  # pids that have slept at level 1
        self._new_pid = itertools.count(FIRST_PID)

    def begin(self, op: Operation, failures: int) -> None:
        """`op` starts now (one at a time per model); its first `failures` step runs fail."""
        self._ops[op.model] = op
        self._failures[op.model] = failures

    def crash(self, model: str) -> int | None:
        """Kill `model`'s process; its pid, or None if none was alive."""
        return self._pids.pop(model, None)

    # ---- Effects --------------------------------------------------------------------

    async def run_step(self, model: str, step: Step, *, abort_inflight: bool) -> None:
        op = self._ops[model]
        if step not in _NEW_TREE and model not in self._pids:
            # Models start asleep without named processes: name one when first used. One
            # found asleep at level 1 has slept before, so its pinned memory is there.
            self._pids[model] = next(self._new_pid)
            if op.kind is OpKind.WAKE and op.eviction.weights is WeightStrategy.OFFLOAD:
                self._pinned.add(self._pids[model])
        if abort_inflight or step is Step.STOP:
            self._on_abort(model)
        pid = self._pids.get(model)
        first_sleep = step is Step.SLEEP_OFFLOAD and pid not in self._pinned
        await Elapse(self._costs.step_secs(op, step, first_sleep=first_sleep))
        if self._failures.get(model, 0):
            self._failures[model] -= 1
            raise StepFailed(model, step, "simulated failure")
        if step is Step.SLEEP_OFFLOAD and pid is not None:
            self._pinned.add(pid)
        if step in _NEW_TREE:
            self._pids[model] = next(self._new_pid)
        elif step in _NO_TREE:
            self._pids.pop(model, None)

    async def kill(self, model: str) -> None:
        if self._pids.pop(model, None) is None:
            return
        self._on_abort(model)
        await Elapse(self._costs.step_secs(self._ops[model], Step.STOP))

    def pid_of(self, model: str) -> int | None:
        return self._pids.get(model)
