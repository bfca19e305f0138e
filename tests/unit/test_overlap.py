"""Overlap (`policy.overlap`): victims leave in parallel, and a wake starts as soon as the
memory it needs is free, while the rest of a victim's eviction finishes in the background.

Three levels, each through its public seam:
- the orchestrator tells `report_freed` after an eviction step that freed the GPU when
  steps remain (never after the last step, never for a wake);
- the pure core (`Driver`): a `GpuFreed` input lets the target's wake start in the same
  step, the switch records only the phases it waited for, `overlap: false` keeps the old
  order, and several victims (one switch, or switches on different GPUs) evict at once;
- the real runner, core and orchestrator over `RecordingEffects`: the target's wake steps
  run while the victim's suspend is still held at a gate.
No process is started.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gpumux.core.config import GIB, Config
from gpumux.core.eviction import Step
from gpumux.core.states import ModelState
from gpumux.policy.registry import make_policy
from gpumux.scheduler.inputs import GpuFreed, OpDone
from gpumux.scheduler.messages import (
    Operation,
    OpKind,
    OpOutcome,
    OpResult,
    StartOp,
    SwitchFinished,
)
from gpumux.scheduler.orchestrator import Orchestrator
from gpumux.scheduler.runner import Scheduler
from gpumux.scheduler.state.core import SchedulerCore
from tests.support.fakes import ManualClock, RecordingEffects, RecordingObserver, no_subprocess
from tests.support.scheduler import Driver

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures(no_subprocess.__name__)]

M = ModelState
SUSPEND = {"weights": "offload", "process": "cuda_suspend"}
SETTLE_SECS = 2.0


def config(
    utils: dict[str, float],
    *,
    gpus: dict[str, list[int]] | None = None,
    eviction: dict[str, str] | None = None,
    capacity_gib: tuple[int, ...] = (80,),
    **policy: Any,
) -> Config:
    return Config.model_validate(
        {
            "models": {
                alias: {
                    "model_path": f"m/{alias}",
                    "port": 8100 + i,
                    "extra_args": ["--gpu-memory-utilization", str(util)],
                    "gpus": (gpus or {}).get(alias, [0]),
                    "eviction": eviction or SUSPEND,
                }
                for i, (alias, util) in enumerate(utils.items())
            },
            "policy": {
                "policy_type": "fifo",
                "min_active_secs": 0,
                "coalesce_window_ms": 0,
                **policy,
            },
            "gpu": {"probe": "fake", "fake_capacity_gib": list(capacity_gib)},
        }
    )


def driver(cfg: Config) -> Driver:
    d = Driver(cfg)
    capacity = {i: int(gib * GIB) for i, gib in enumerate(cfg.gpu.fake_capacity_gib)}
    d.core = SchedulerCore(cfg, make_policy(cfg.policy), capacity)
    return d


def up(d: Driver, model: str, ticket: int) -> None:
    """Bring `model` up with one request and release it."""
    d.submit(ticket, model)
    d.finish(model)
    assert d.state(model) is M.READY
    d.release(ticket)


def wakes(commands: list[Any]) -> list[str]:
    return [c.op.model for c in commands if isinstance(c, StartOp) and c.op.kind is OpKind.WAKE]


def done(d: Driver, model: str, phases: tuple[tuple[str, float], ...]) -> list[Any]:
    """`model`'s pending operation finished with `phases`; the commands that followed."""
    op = d.pending_op(model).op
    del d.ops[op.op_id]
    return d.send(OpDone(OpOutcome(op.op_id, OpResult.OK, pid=1000 + op.op_id, phase_secs=phases)))


def freed(d: Driver, model: str, secs: float = 0.5) -> list[Any]:
    """The victim's first eviction step is done: its GPU memory is down to a sleeper's."""
    op = d.pending_op(model).op
    assert op.kind is OpKind.EVICT
    return d.send(GpuFreed(op.op_id, M.SLEEPING, (("sleep", secs),)))


# ---- the orchestrator ----------------------------------------------------------------------


async def test_the_orchestrator_reports_freed_memory_after_a_freeing_step_with_steps_left() -> None:
    clock = ManualClock()
    effects = RecordingEffects(
        clock, step_secs={Step.SLEEP_OFFLOAD: 1.0, Step.CUDA_SUSPEND: 4.0}, alive=["a"]
    )
    heard: list[tuple[ModelState, tuple[tuple[str, float], ...], float]] = []
    evict = Operation(
        1,
        "a",
        OpKind.EVICT,
        (Step.SLEEP_OFFLOAD, Step.CUDA_SUSPEND),
        config({"a": 0.9}).eviction_for("a"),
        resting_state=M.SUSPENDED,
    )
    outcome = await Orchestrator(effects, clock).run(
        evict, lambda _: None, lambda holds, phases: heard.append((holds, phases, clock()))
    )
    assert outcome.result is OpResult.OK
    # Told once, when the sleep was done (1 s in), not after the suspend (the last step).
    assert heard == [(M.SLEEPING, (("sleep", 1.0),), 1.0)]


async def test_the_orchestrator_reports_nothing_early_for_one_step_evictions_or_wakes() -> None:
    clock = ManualClock()
    effects = RecordingEffects(clock, alive=["a"])
    heard: list[object] = []
    eviction = config({"a": 0.9}).eviction_for("a")
    ops = [
        Operation(1, "a", OpKind.EVICT, (Step.SLEEP_OFFLOAD,), eviction, resting_state=M.SLEEPING),
        Operation(2, "a", OpKind.WAKE, (Step.WAKE_ALL, Step.WARMUP), eviction),
    ]
    for op in ops:
        outcome = await Orchestrator(effects, clock).run(
            op, lambda _: None, lambda *told: heard.append(told)
        )
        assert outcome.result is OpResult.OK
    assert heard == []


# ---- the core --------------------------------------------------------------------------------


def test_the_wake_starts_when_the_victims_memory_is_freed_not_when_its_eviction_ends() -> None:
    d = driver(config({"a": 0.9, "b": 0.9}))
    up(d, "a", 1)
    d.submit(2, "b")
    assert d.state("a") is M.EVICTING
    assert d.pending_op("a").op.steps == (Step.SLEEP_OFFLOAD, Step.CUDA_SUSPEND)
    d.now = 1.0
    assert wakes(freed(d, "a")) == ["b"]
    assert d.state("a") is M.EVICTING  # its suspend goes on in the background
    assert d.state("b") is M.STARTING
    d.now = 2.0
    d.finish("b")
    assert 2 in d.granted
    d.now = 5.0
    d.finish("a")
    assert d.state("a") is M.SUSPENDED
    (switch,) = [c for c in d.log if isinstance(c, SwitchFinished) and c.target == "b"]
    # The switch waited for the sleep only; the suspend ran off its path.
    assert switch.outcome == "ok"
    assert switch.duration_secs == 2.0
    assert [phase for phase, _ in switch.phase_secs] == ["sleep"]


def test_without_overlap_the_wake_waits_for_the_whole_eviction() -> None:
    d = driver(config({"a": 0.9, "b": 0.9}, overlap=False))
    up(d, "a", 1)
    d.submit(2, "b")
    d.now = 1.0
    assert wakes(freed(d, "a")) == []
    assert d.state("b") is M.STOPPED
    d.now = 5.0
    assert wakes(done(d, "a", (("sleep", 1.0), ("suspend", 4.0)))) == ["b"]
    d.finish("b")
    (switch,) = [c for c in d.log if isinstance(c, SwitchFinished) and c.target == "b"]
    assert [phase for phase, _ in switch.phase_secs] == ["sleep", "suspend"]


def test_freed_memory_counts_only_while_that_eviction_runs() -> None:
    d = driver(config({"a": 0.9, "b": 0.9}))
    up(d, "a", 1)
    d.submit(2, "b")
    freed(d, "a")
    d.finish("b")
    d.finish("a", OpResult.FALLBACK_STOP)  # the suspend failed: the tree was killed
    assert d.state("a") is M.STOPPED
    assert d.slot("a").freed_to is None
    # `a`'s next eviction holds its whole share again until it says otherwise.
    d.release(2)
    d.submit(3, "a")
    d.finish("b")  # b evicts for a (no early report: nothing may wake over it)
    d.finish("a")
    d.release(3)
    d.submit(4, "b")
    assert d.state("a") is M.EVICTING
    assert d.slot("a").freed_to is None
    assert d.core.models.admit("b", d.now).fits_now is False


def test_a_report_for_an_operation_that_is_not_an_eviction_changes_nothing() -> None:
    d = driver(config({"a": 0.9, "b": 0.9}))
    d.submit(1, "a")
    wake = d.pending_op("a").op
    d.send(GpuFreed(wake.op_id, M.SLEEPING))
    assert d.slot("a").freed_to is None
    assert d.state("a") is M.STARTING


def test_several_victims_of_one_switch_evict_at_once_and_the_wake_needs_all_their_memory() -> None:
    d = driver(config({"a": 0.45, "b": 0.45, "c": 0.9}))
    up(d, "a", 1)
    up(d, "b", 2)
    d.submit(3, "c")
    evicting = {s.op.model for s in d.ops.values() if s.op.kind is OpKind.EVICT}
    assert evicting == {"a", "b"}  # both started in one step, neither waits for the other
    assert wakes(freed(d, "a")) == []  # b still holds half the GPU
    assert wakes(freed(d, "b")) == ["c"]
    assert d.state("a") is M.EVICTING
    assert d.state("b") is M.EVICTING


def test_switches_on_different_gpus_evict_their_victims_at_once() -> None:
    cfg = config(
        {"a": 0.9, "b": 0.9, "c": 0.9, "d": 0.9},
        gpus={"a": [0], "b": [0], "c": [1], "d": [1]},
        capacity_gib=(80, 80),
    )
    d = driver(cfg)
    up(d, "a", 1)
    up(d, "c", 2)
    d.submit(3, "b")
    d.submit(4, "d")
    evicting = {s.op.model for s in d.ops.values() if s.op.kind is OpKind.EVICT}
    assert evicting == {"a", "c"}
    assert wakes(freed(d, "c")) == ["d"]  # GPU 1's switch does not wait for GPU 0's
    assert wakes(freed(d, "a")) == ["b"]


# ---- the runner, over recording effects --------------------------------------------------


async def test_through_the_runner_the_target_wakes_while_the_victims_suspend_is_held() -> None:
    cfg = config({"a": 0.9, "b": 0.9})
    clock = ManualClock()
    effects = RecordingEffects(clock)
    observer = RecordingObserver()
    core = SchedulerCore(cfg, make_policy(cfg.policy), {0: 80 * GIB})
    scheduler = Scheduler(core, Orchestrator(effects, clock), observer, clock)
    task = asyncio.create_task(scheduler.run())
    try:
        scheduler.release(await asyncio.wait_for(scheduler.acquire("a"), SETTLE_SECS))
        suspend = effects.hold("a", Step.CUDA_SUSPEND)
        lease = await asyncio.wait_for(scheduler.acquire("b"), SETTLE_SECS)
        assert not suspend.opened.is_set()  # b was granted while a's suspend was held
        assert effects.steps("b") == [Step.COLD_START]
        assert effects.steps("a") == [Step.COLD_START, Step.SLEEP_OFFLOAD, Step.CUDA_SUSPEND]
        suspend.open()
        async with asyncio.timeout(SETTLE_SECS):
            await observer.until(
                lambda: any(s.model == "a" and s.after is M.SUSPENDED for s in observer.states)
            )
        scheduler.release(lease)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_an_overlapped_eviction_still_teaches_its_whole_cost() -> None:
    d = driver(config({"a": 0.9, "b": 0.9}))
    up(d, "a", 1)
    d.submit(2, "b")
    d.now = 1.0
    freed(d, "a")
    d.now = 6.0
    eviction = d.pending_op("a").op.eviction
    done(d, "a", (("sleep", 1.0), ("suspend", 5.0)))
    assert d.core.costs.op_cost("a", "evict", str(eviction)) == 6.0
