"""Carries out one operation (evict, wake or stop of one model) step by step.

Owns: the order of steps within an operation, their timing per phase, and the fallbacks
of design §3: a failed wake kills the tree and cold-starts once; a failed eviction step
kills the tree so the memory is freed anyway.
Also: the moment an eviction's GPU memory is free. A plan of several steps (a sleep,
then a suspend or a CRIU dump) frees the GPU at its first step; the orchestrator says so
through `report_freed` and runs the rest, so the core can start the next wake while the
tail finishes (design §4, `policy.overlap`; whether to use it is the core's call).
Does not: decide anything about other models or touch scheduler state. It talks to the
world only through the `Effects` protocol and reports intermediate states through
callbacks, so the simulator can run it against simulated backends in virtual time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from gpumux.core.errors import StepFailed
from gpumux.core.eviction import PHASE_OF, Step
from gpumux.core.states import ModelState
from gpumux.scheduler.messages import Operation, OpKind, OpOutcome, OpResult


class Effects(Protocol):
    """Everything an operation can do to the world."""

    async def run_step(self, model: str, step: Step, *, abort_inflight: bool) -> None:
        """Perform one step; raise StepFailed when it did not work."""

    async def kill(self, model: str) -> None:
        """Kill the model's process tree and reap it (idempotent)."""

    def pid_of(self, model: str) -> int | None:
        """Root pid of the model's live tree, if any."""


Clock = Callable[[], float]
PhaseReporter = Callable[[ModelState], None]
Phases = tuple[tuple[str, float], ...]
#: Told (state whose GPU footprint the model now has, phases measured so far).
FreedReporter = Callable[[ModelState, Phases], None]

#: What a model keeps on its GPUs once each eviction step is done: a sleep leaves the
#: CUDA context (placement's residual of a sleeper), the others leave nothing.
GPU_AFTER: dict[Step, ModelState] = {
    Step.SLEEP_OFFLOAD: ModelState.SLEEPING,
    Step.SLEEP_DISCARD: ModelState.SLEEPING,
    Step.CUDA_SUSPEND: ModelState.SUSPENDED,
    Step.CRIU_DUMP: ModelState.CHECKPOINTED,
    Step.STOP: ModelState.STOPPED,
}


class Orchestrator:
    def __init__(self, effects: Effects, clock: Clock) -> None:
        self._effects = effects
        self._clock = clock

    async def run(
        self,
        op: Operation,
        report_state: PhaseReporter,
        report_freed: FreedReporter | None = None,
    ) -> OpOutcome:
        """Run `op`; `report_freed` (evictions only) hears when its GPU memory is free
        while steps remain (a caller without it sees only the outcome, as before)."""
        phases: list[tuple[str, float]] = []
        try:
            await self._run_steps(op, op.steps, phases, report_freed)
        except StepFailed as failure:
            return await self._recover(op, failure, phases, report_state)
        return OpOutcome(
            op.op_id, OpResult.OK, self._effects.pid_of(op.model), phase_secs=tuple(phases)
        )

    async def _run_steps(
        self,
        op: Operation,
        steps: tuple[Step, ...],
        phases: list[tuple[str, float]],
        report_freed: FreedReporter | None = None,
    ) -> None:
        for index, step in enumerate(steps):
            started = self._clock()
            await self._effects.run_step(op.model, step, abort_inflight=op.abort_inflight)
            phases.append((PHASE_OF[step], self._clock() - started))
            freed = GPU_AFTER.get(step)
            # After the last step the outcome follows at once: nothing to report early.
            early = op.kind is OpKind.EVICT and index < len(steps) - 1
            if report_freed is not None and early and freed is not None:
                report_freed(freed, tuple(phases))

    async def _recover(
        self,
        op: Operation,
        failure: StepFailed,
        phases: list[tuple[str, float]],
        report_state: PhaseReporter,
    ) -> OpOutcome:
        await self._effects.kill(op.model)
        if op.kind is OpKind.WAKE and failure.step is not Step.COLD_START:
            # Design §3: any wake failure -> kill the tree, cold start once.
            report_state(ModelState.STARTING)
            cold = (Step.COLD_START, Step.WARMUP) if Step.WARMUP in op.steps else (Step.COLD_START,)
            try:
                await self._run_steps(op, cold, phases)
            except StepFailed as second:
                await self._effects.kill(op.model)
                return self._failed(op, f"{failure.detail}; cold start: {second.detail}", phases)
            return OpOutcome(
                op.op_id,
                OpResult.FALLBACK_COLD,
                self._effects.pid_of(op.model),
                error=failure.detail,
                phase_secs=tuple(phases),
            )
        if op.kind is OpKind.EVICT:
            # The weights step failed: the kill above freed the GPU, which is what we needed.
            return OpOutcome(op.op_id, OpResult.FALLBACK_STOP, None, failure.detail, tuple(phases))
        return self._failed(op, failure.detail, phases)

    @staticmethod
    def _failed(op: Operation, detail: str, phases: list[tuple[str, float]]) -> OpOutcome:
        return OpOutcome(op.op_id, OpResult.FAILED, None, detail, tuple(phases))
