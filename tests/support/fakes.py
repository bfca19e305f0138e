"""Fakes for the in-process tests: a manual clock, a recording `Effects`, a recording
scheduler observer, and a guard that fails a test which starts a subprocess.

Owns: `ManualClock` (virtual time a test or a fake moves forward), `RecordingEffects`
(implements `gpumux.scheduler.orchestrator.Effects`: records every step and kill with the
virtual time, keeps a fake pid per model the way `backends.effects.Backends` does, and
can be told to fail, hold or script a given step of a given model), `RecordingObserver`
(implements the runner's `SchedulerObserver`, with a hook that runs synchronously when
queue depths or lease counts change), and the `no_subprocess` fixture.
Does not: decide anything or know the scheduler's state; tests drive the orchestrator
and the runner through their public APIs and watch these records.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import pytest

from gpumux.core.errors import StepFailed
from gpumux.core.eviction import Step
from gpumux.scheduler.messages import Note, QueueWait, Restarted, StateChanged, SwitchFinished

#: What `RecordingEffects.calls` names a kill (steps are named by their `Step`).
KILL = "kill"
#: Steps after which a model has a fresh tree, and steps after which it has none
#: (as in `Backends.run_step`: any other step on a model without a tree fails).
NEW_TREE = frozenset({Step.COLD_START, Step.CRIU_RESTORE})
NO_TREE = frozenset({Step.STOP, Step.CRIU_DUMP})
FIRST_PID = 4000


class ManualClock:
    """Virtual seconds: only `advance` (or a fake step that takes time) moves it."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, secs: float) -> None:
        assert secs >= 0, secs
        self.now += secs


@dataclass(frozen=True)
class EffectCall:
    """One call the orchestrator made, at the virtual time it began."""

    at: float
    model: str
    action: Step | str  # the step, or KILL
    abort_inflight: bool = False


@dataclass
class Gate:
    """Holds one step: `entered` is set when the step starts, it waits until `open()`."""

    entered: asyncio.Event = field(default_factory=asyncio.Event)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: bool = False  # the step was cancelled while held

    def open(self) -> None:
        self.opened.set()


Action = Callable[[], Awaitable[None]]


class RecordingEffects:
    """`Effects` that does nothing real: every step takes `step_secs[step]` virtual seconds
    (0 unless given) and succeeds, unless the test said otherwise."""

    def __init__(
        self,
        clock: ManualClock,
        *,
        step_secs: Mapping[Step, float] | None = None,
        alive: Iterable[str] = (),
    ) -> None:
        """`alive`: models that already have a tree (their pids come first)."""
        self.clock = clock
        self.calls: list[EffectCall] = []
        self._secs = dict(step_secs or {})
        self._new_pid = itertools.count(FIRST_PID)
        self._pids = {model: next(self._new_pid) for model in alive}
        self._scripted: dict[tuple[str, Step], deque[Action]] = {}
        self._gates: dict[tuple[str, Step], deque[Gate]] = {}

    # ---- what the test says -------------------------------------------------------------

    def fail(self, model: str, step: Step, detail: str = "injected", *, times: int = 1) -> None:
        """The next `times` runs of `step` on `model` fail with `detail`."""

        async def failing() -> None:
            raise StepFailed(model, step, detail)

        for _ in range(times):
            self.script(model, step, failing)

    def script(self, model: str, step: Step, action: Action) -> None:
        """The next run of `step` on `model` is `action` (it may raise StepFailed)."""
        self._scripted.setdefault((model, step), deque()).append(action)

    def hold(self, model: str, step: Step) -> Gate:
        """The next run of `step` on `model` waits at the returned gate (or is cancelled)."""
        gate = Gate()
        self._gates.setdefault((model, step), deque()).append(gate)
        return gate

    def steps(self, model: str) -> list[Step | str]:
        """What was done to `model`, in order (steps and kills)."""
        return [c.action for c in self.calls if c.model == model]

    # ---- Effects --------------------------------------------------------------------

    async def run_step(self, model: str, step: Step, *, abort_inflight: bool) -> None:
        self.calls.append(EffectCall(self.clock(), model, step, abort_inflight))
        await asyncio.sleep(0)  # a real suspension point, as every real step has
        gates = self._gates.get((model, step))
        if gates:
            await self._wait_at(gates.popleft())
        scripted = self._scripted.get((model, step))
        try:
            if scripted:
                await scripted.popleft()()
        except StepFailed:
            if step in NEW_TREE:
                self._pids.pop(model, None)  # a start that failed leaves no tree
            raise
        self.clock.advance(self._secs.get(step, 0.0))
        if step in NEW_TREE:
            self._pids[model] = next(self._new_pid)
        elif step in NO_TREE:
            self._pids.pop(model, None)
        elif model not in self._pids:
            raise StepFailed(model, step, "the backend process is gone")

    async def kill(self, model: str) -> None:
        self.calls.append(EffectCall(self.clock(), model, KILL))
        self._pids.pop(model, None)

    def pid_of(self, model: str) -> int | None:
        return self._pids.get(model)

    @staticmethod
    async def _wait_at(gate: Gate) -> None:
        gate.entered.set()
        try:
            await gate.opened.wait()
        except asyncio.CancelledError:
            gate.cancelled = True
            raise


class RecordingObserver:
    """The runner's `SchedulerObserver`, remembering everything it is told."""

    def __init__(self) -> None:
        self.states: list[StateChanged] = []
        self.switches: list[SwitchFinished] = []
        self.restarts: list[Restarted] = []
        self.waits: list[QueueWait] = []
        self.notes: list[Note] = []
        self.depths: dict[str, int] = {}
        self.inflight: dict[str, int] = {}
        #: Called synchronously, inside the scheduler task, after each batch of commands
        #: (lets a test act in the exact gap between a grant and its requester resuming).
        self.on_queues: Callable[[], None] | None = None
        self._told = asyncio.Event()  # set whenever the scheduler tells us anything

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until `condition` (about what we were told) holds; the caller bounds it."""
        while not condition():
            self._told.clear()
            await self._told.wait()

    def state_changed(self, event: StateChanged) -> None:
        self.states.append(event)
        self._told.set()

    def switch_finished(self, event: SwitchFinished) -> None:
        self.switches.append(event)
        self._told.set()

    def restarted(self, event: Restarted) -> None:
        self.restarts.append(event)
        self._told.set()

    def queue_wait(self, event: QueueWait) -> None:
        self.waits.append(event)
        self._told.set()

    def note(self, event: Note) -> None:
        self.notes.append(event)
        self._told.set()

    def queues_changed(self, depths: dict[str, int], inflight: dict[str, int]) -> None:
        self.depths, self.inflight = dict(depths), dict(inflight)
        self._told.set()
        if self.on_queues is not None:
            self.on_queues()


@pytest.fixture
def no_subprocess(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail the test if anything tries to start a process (even if it caught the error).

    `Popen._execute_child` is where every `subprocess` and asyncio subprocess ends up;
    fork and spawn cover the rest.
    """
    attempts: list[str] = []

    def refuse(what: str) -> Callable[..., object]:
        def refused(*args: object, **kwargs: object) -> object:
            attempts.append(what)
            raise AssertionError(f"an in-process test started a process ({what})")

        return refused

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse("subprocess.Popen"))
    monkeypatch.setattr(asyncio, "create_subprocess_exec", refuse("create_subprocess_exec"))
    monkeypatch.setattr(asyncio, "create_subprocess_shell", refuse("create_subprocess_shell"))
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse(f"os.{name}"))
    yield attempts
    assert not attempts, f"processes were started: {attempts}"
