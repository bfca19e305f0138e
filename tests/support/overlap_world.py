"""A virtual-time world for overlapped evictions: the real core, steps that take time, and
GPU memory as the processes would really hold it.

Owns: `OverlapWorld`, which feeds `SchedulerCore` its inputs at virtual times and carries
out its commands the way the runner and orchestrator do (each operation's steps take the
seconds a test gives, an eviction reports `GpuFreed` after a step that freed the GPU while
steps remain, then `OpDone`; a grant is released after its service time), and keeps its
own account of what each model physically holds on each GPU: its whole share from the
moment a wake or start begins, a sleeper's residual once a sleep step is done, nothing
once a suspend, dump or stop is done. That account is independent of the core's
placement bookkeeping, so a core that started a wake before the memory was really free
shows up as a GPU over its capacity.
Does not: assert anything (tests do, from `over_budget`, `overlapped` and the records).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gpumux.core.config import Config
from gpumux.core.eviction import PHASE_OF, Step
from gpumux.core.states import ModelState
from gpumux.policy.registry import make_policy
from gpumux.scheduler.inputs import GpuFreed, Input, OpDone, Release, Submit, Tick
from gpumux.scheduler.messages import (
    Command,
    Grant,
    Operation,
    OpKind,
    OpOutcome,
    OpResult,
    Reject,
    StartOp,
)
from gpumux.scheduler.orchestrator import GPU_AFTER
from gpumux.scheduler.state.core import SchedulerCore

M = ModelState
#: Seconds a step of a model takes (the test decides).
StepSecs = Callable[[str, Step], float]


@dataclass
class OverlapWorld:
    config: Config
    capacity: Mapping[int, int]
    step_secs: StepSecs
    service_secs: float = 1.0
    core: SchedulerCore = field(init=False)
    now: float = 0.0
    #: The state whose GPU footprint each model physically holds.
    holds: dict[str, ModelState] = field(init=False)
    over_budget: list[str] = field(default_factory=list)
    overlapped: int = 0  # wakes begun while a model on the same GPU was still evicting
    answered: dict[int, str] = field(default_factory=dict)  # ticket -> granted | rejected
    _events: list[tuple[float, int, Callable[[], None]]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _evicting: set[str] = field(default_factory=set)  # physically still running evict steps

    def __post_init__(self) -> None:
        self.core = SchedulerCore(self.config, make_policy(self.config.policy), self.capacity)
        self.holds = dict.fromkeys(self.config.models, M.STOPPED)

    # ---- driving ---------------------------------------------------------------------

    def arrive(self, at: float, ticket: int, model: str) -> None:
        self._at(at, lambda: self._send(Submit(ticket, model)))

    def run(self, until: float) -> None:
        """Run events and the core's deadlines in time order, up to `until`."""
        while True:
            deadline = self.core.next_deadline()
            next_event = self._events[0][0] if self._events else None
            times = [t for t in (deadline, next_event) if t is not None]
            if not times or min(times) > until:
                return
            when = min(times)
            self.now = max(self.now, when)
            if next_event is not None and next_event <= when:
                _, _, action = heapq.heappop(self._events)
                action()
            else:
                self._send(Tick())

    # ---- the core's side -------------------------------------------------------------

    def _at(self, at: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (at, next(self._seq), action))

    def _send(self, message: Input) -> None:
        for command in self.core.handle(message, self.now):
            self._execute(command)

    def _execute(self, command: Command) -> None:
        if isinstance(command, Grant):
            self.answered[command.ticket] = "granted"
            ticket = command.ticket
            self._at(self.now + self.service_secs, lambda: self._send(Release(ticket)))
        elif isinstance(command, Reject):
            self.answered[command.ticket] = "rejected"
        elif isinstance(command, StartOp):
            self._begin(command.op)

    def _begin(self, op: Operation) -> None:
        if op.kind is OpKind.WAKE:
            gpus = set(self.config.models[op.model].gpu_indices)
            if any(gpus & set(self.config.models[m].gpu_indices) for m in self._evicting):
                self.overlapped += 1
            self.holds[op.model] = M.READY  # vLLM reserves its whole share as it comes up
            self._check()
        elif op.kind is OpKind.EVICT:
            self._evicting.add(op.model)
        self._step(op, 0, ())

    def _step(self, op: Operation, index: int, phases: tuple[tuple[str, float], ...]) -> None:
        step = op.steps[index]
        secs = self.step_secs(op.model, step)
        self._at(
            self.now + secs, lambda: self._stepped(op, index, (*phases, (PHASE_OF[step], secs)))
        )

    def _stepped(self, op: Operation, index: int, phases: tuple[tuple[str, float], ...]) -> None:
        step = op.steps[index]
        last = index == len(op.steps) - 1
        if op.kind is not OpKind.WAKE and step in GPU_AFTER:
            self.holds[op.model] = GPU_AFTER[step]
        if not last:
            if op.kind is OpKind.EVICT and step in GPU_AFTER:
                self._send(GpuFreed(op.op_id, GPU_AFTER[step], phases))
            self._step(op, index + 1, phases)
            return
        self._evicting.discard(op.model)
        pid = None if self.holds[op.model] in (M.STOPPED, M.CHECKPOINTED) else 1
        self._send(OpDone(OpOutcome(op.op_id, OpResult.OK, pid, phase_secs=phases)))

    # ---- the physical account ---------------------------------------------------------

    def used(self) -> dict[int, int]:
        used = dict.fromkeys(self.capacity, 0)
        for alias, state in self.holds.items():
            slot = self.core.models.slots[alias]
            for gpu in slot.config.gpu_indices:
                if state is M.READY:
                    used[gpu] += int(slot.config.gpu_memory_utilization * self.capacity[gpu])
                elif state is M.SLEEPING:
                    used[gpu] += slot.residual_bytes
        return used

    def _check(self) -> None:
        for gpu, nbytes in self.used().items():
            if nbytes > self.capacity[gpu]:
                self.over_budget.append(
                    f"t={self.now:.2f} GPU {gpu}: {nbytes} > {self.capacity[gpu]}"
                )
