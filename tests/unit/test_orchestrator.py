"""The orchestrator through every fallback of design §3, in process and in virtual time.

A `RecordingEffects` stands in for the backends and a `ManualClock` for the loop's clock:
each test runs one operation and checks the calls made (with their virtual times), the
outcome, the phases timed and the intermediate states reported. A failed restore runs
the real `Checkpoints` restore sequence on an image in a temporary directory, so the
image's fate (quarantined when it was the image's fault, left in place when it was the
host's) is checked together with the fallback that follows it. No process is started.
"""

from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path

import pytest

from gpumux.checkpoint import checkpoints as checkpoints_module
from gpumux.checkpoint import criu, images
from gpumux.checkpoint.checkpoints import CheckpointFailed, Checkpoints
from gpumux.checkpoint.host_io import driver_version
from gpumux.checkpoint.identity import ModelIdentity
from gpumux.checkpoint.images import Image
from gpumux.core.config import Config, EvictionConfig
from gpumux.core.errors import StepFailed
from gpumux.core.eviction import PHASE_OF, Step, evict_plan, wake_plan
from gpumux.core.port_ranges import parse_ports
from gpumux.core.states import ModelState
from gpumux.scheduler.messages import Operation, OpKind, OpOutcome, OpResult
from gpumux.scheduler.orchestrator import Orchestrator
from tests.support.fakes import (
    FIRST_PID,
    KILL,
    EffectCall,
    ManualClock,
    RecordingEffects,
    no_subprocess,
)

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures(no_subprocess.__name__)]

#: Seconds each step takes in virtual time (distinct, so every phase is recognisable).
SECS = {
    Step.SLEEP_OFFLOAD: 3.0,
    Step.SLEEP_DISCARD: 0.25,
    Step.CUDA_SUSPEND: 5.0,
    Step.CRIU_DUMP: 10.0,
    Step.STOP: 2.0,
    Step.COLD_START: 45.0,
    Step.CUDA_RESUME: 2.5,
    Step.CRIU_RESTORE: 12.0,
    Step.WAKE_ALL: 1.5,
    Step.WAKE_WEIGHTS: 0.125,
    Step.RELOAD_WEIGHTS: 4.0,
    Step.WAKE_KV_CACHE: 0.375,
    Step.RESET_PREFIX_CACHE: 0.0625,
    Step.WARMUP: 0.5,
}


def evict(spec: str, *, abort: bool = False) -> Operation:
    eviction = EvictionConfig.parse(spec)
    steps, resting = evict_plan(eviction)
    return Operation(
        1, "a", OpKind.EVICT, steps, eviction, abort_inflight=abort, resting_state=resting
    )


def wake(spec: str, since: ModelState, *, warmup: bool = False) -> Operation:
    eviction = EvictionConfig.parse(spec)
    steps = wake_plan(eviction.weights, since, warmup=warmup)
    return Operation(2, "a", OpKind.WAKE, steps, eviction)


class Run:
    """One orchestrator over recording effects; `go` runs an operation to its outcome."""

    def __init__(self, *, alive: bool = True) -> None:
        self.clock = ManualClock(100.0)
        self.effects = RecordingEffects(self.clock, step_secs=SECS, alive=["a"] if alive else [])
        self.reported: list[ModelState] = []

    async def go(self, op: Operation) -> OpOutcome:
        return await Orchestrator(self.effects, self.clock).run(op, self.reported.append)

    def phases(self, *steps: Step) -> tuple[tuple[str, float], ...]:
        return tuple((PHASE_OF[step], SECS[step]) for step in steps)


# ---- the plain paths: steps in order, each phase timed -----------------------------------


async def test_an_eviction_runs_its_steps_in_order_and_times_each_phase() -> None:
    run = Run()
    outcome = await run.go(evict("discard+checkpoint"))
    assert outcome == OpOutcome(
        1, OpResult.OK, None, phase_secs=run.phases(Step.SLEEP_DISCARD, Step.CRIU_DUMP)
    )
    assert run.effects.calls == [
        EffectCall(100.0, "a", Step.SLEEP_DISCARD),
        EffectCall(100.25, "a", Step.CRIU_DUMP),
    ]
    assert run.reported == []


async def test_a_level_2_wake_times_every_step_under_its_phase_and_keeps_the_tree() -> None:
    run = Run()
    op = wake("discard+keep_running", ModelState.SLEEPING, warmup=True)
    outcome = await run.go(op)
    assert op.steps == (
        Step.WAKE_WEIGHTS,
        Step.RELOAD_WEIGHTS,
        Step.WAKE_KV_CACHE,
        Step.RESET_PREFIX_CACHE,
        Step.WARMUP,
    )
    assert outcome.result is OpResult.OK
    assert outcome.pid == FIRST_PID  # the tree that was asleep
    assert outcome.phase_secs == run.phases(*op.steps)
    assert [c.at for c in run.effects.calls] == [100.0, 100.125, 104.125, 104.5, 104.5625]


async def test_a_drain_that_gave_up_makes_every_step_abort_in_flight_requests() -> None:
    run = Run()
    outcome = await run.go(evict("offload+cuda_suspend", abort=True))
    assert outcome.result is OpResult.OK
    assert outcome.pid == FIRST_PID  # suspended, not gone
    assert [(c.action, c.abort_inflight) for c in run.effects.calls] == [
        (Step.SLEEP_OFFLOAD, True),
        (Step.CUDA_SUSPEND, True),
    ]


# ---- a wake fails: kill the tree, cold start once -------------------------------------


WAKE_STEPS = [
    ("discard+keep_running", ModelState.SLEEPING, step)
    for step in wake("discard+keep_running", ModelState.SLEEPING, warmup=True).steps
] + [
    ("offload+cuda_suspend", ModelState.SUSPENDED, Step.CUDA_RESUME),
    ("offload+checkpoint", ModelState.CHECKPOINTED, Step.CRIU_RESTORE),
    ("offload+checkpoint", ModelState.CHECKPOINTED, Step.WAKE_ALL),
]


@pytest.mark.parametrize(("spec", "since", "failing"), WAKE_STEPS)
async def test_any_failed_wake_step_kills_the_tree_and_cold_starts_once(
    spec: str, since: ModelState, failing: Step
) -> None:
    run = Run()
    op = wake(spec, since, warmup=True)
    run.effects.fail("a", failing, "it broke")
    outcome = await run.go(op)
    done = list(op.steps[: op.steps.index(failing)])
    assert run.effects.steps("a") == [*done, failing, KILL, Step.COLD_START, Step.WARMUP]
    assert run.reported == [ModelState.STARTING]  # the model is starting, not waking
    assert outcome.result is OpResult.FALLBACK_COLD
    assert outcome.error == "it broke"
    assert outcome.pid == run.effects.pid_of("a") != FIRST_PID  # a new tree
    # Steps that completed are timed; the failed one is not (the switch's total is).
    assert outcome.phase_secs == run.phases(*done, Step.COLD_START, Step.WARMUP)


async def test_the_cold_start_after_a_failed_wake_warms_up_only_if_the_wake_would_have() -> None:
    run = Run()
    run.effects.fail("a", Step.WAKE_ALL)
    outcome = await run.go(wake("offload+keep_running", ModelState.SLEEPING))
    assert run.effects.steps("a") == [Step.WAKE_ALL, KILL, Step.COLD_START]
    assert outcome.result is OpResult.FALLBACK_COLD


async def test_when_the_cold_start_fails_too_the_model_is_failed_and_no_tree_is_left() -> None:
    run = Run()
    run.effects.fail("a", Step.CUDA_RESUME, "resume failed")
    run.effects.fail("a", Step.COLD_START, "exited with code 1 during start")
    outcome = await run.go(wake("offload+cuda_suspend", ModelState.SUSPENDED, warmup=True))
    assert run.effects.steps("a") == [Step.CUDA_RESUME, KILL, Step.COLD_START, KILL]
    assert run.reported == [ModelState.STARTING]
    assert outcome.result is OpResult.FAILED
    assert outcome.pid is None
    assert outcome.error == "resume failed; cold start: exited with code 1 during start"


async def test_a_failed_cold_start_is_not_started_again() -> None:
    run = Run(alive=False)
    run.effects.fail("a", Step.COLD_START, "not healthy within startup_timeout_secs=600")
    outcome = await run.go(wake("offload+keep_running", ModelState.STOPPED, warmup=True))
    assert run.effects.steps("a") == [Step.COLD_START, KILL]
    assert run.reported == []
    assert outcome.result is OpResult.FAILED
    assert outcome.error == "not healthy within startup_timeout_secs=600"


async def test_a_wake_of_a_tree_that_died_asleep_falls_back_to_a_cold_start() -> None:
    run = Run(alive=False)  # as `Backends`: a step on a model without a tree fails
    outcome = await run.go(wake("offload+keep_running", ModelState.SLEEPING))
    assert outcome.result is OpResult.FALLBACK_COLD
    assert outcome.error == "the backend process is gone"


# ---- an eviction step fails: kill the tree -------------------------------------------


@pytest.mark.parametrize(
    ("spec", "failing"),
    [
        ("offload+keep_running", Step.SLEEP_OFFLOAD),
        ("discard+cuda_suspend", Step.SLEEP_DISCARD),
        ("discard+cuda_suspend", Step.CUDA_SUSPEND),
        ("offload+checkpoint", Step.CRIU_DUMP),
    ],
)
async def test_a_failed_eviction_step_kills_the_tree_and_runs_nothing_after_it(
    spec: str, failing: Step
) -> None:
    run = Run()
    op = evict(spec)
    run.effects.fail("a", failing, "no luck")
    outcome = await run.go(op)
    done = list(op.steps[: op.steps.index(failing)])
    assert run.effects.steps("a") == [*done, failing, KILL]
    assert outcome == OpOutcome(1, OpResult.FALLBACK_STOP, None, "no luck", run.phases(*done))
    assert run.effects.pid_of("a") is None
    assert run.reported == []


async def test_a_failed_stop_still_kills_the_tree_and_reports_failure() -> None:
    run = Run()
    eviction = EvictionConfig.parse("offload+keep_running")
    op = Operation(3, "a", OpKind.STOP, (Step.STOP,), eviction, resting_state=ModelState.STOPPED)
    run.effects.fail("a", Step.STOP, "reap timed out")
    outcome = await run.go(op)
    assert run.effects.steps("a") == [Step.STOP, KILL]
    assert outcome == OpOutcome(3, OpResult.FAILED, None, "reap timed out", ())


# ---- a restore fails: the image is quarantined or kept, then one cold start ------------

CRIU_VERSION = "4.2.1"


class KnownCriu(Checkpoints):
    """The real restore sequence; only the CRIU version is given rather than asked of a
    `criu` binary (the one thing before these failures that would start a process)."""

    async def criu_version(self) -> str:
        return CRIU_VERSION


def checkpoint_config(tmp_path: Path, port: int) -> Config:
    return Config.model_validate(
        {
            "models": {
                "a": {
                    "model_path": "m/a",
                    "port": port,
                    "eviction": {"weights": "offload", "process": "checkpoint"},
                }
            },
            "checkpoint": {"images_dir": str(tmp_path / "images")},
            "gpu": {"probe": "fake", "fake_capacity_gib": [80]},
        }
    )


def bake(
    config: Config, images_dir: Path, pids: list[int], listening: tuple[int, ...] = ()
) -> Image:
    """A pre-baked image of `a` made here (identity matches), with the given pids and
    the loopback ports its tree listened on besides the model's own."""
    identity = ModelIdentity.of(config, "a")
    target = images_dir / "a" / "v1"
    staging = images.staging_dir(target)
    (staging / "pages-1.img").write_bytes(b"p" * 4096)
    fields: dict[str, object] = {
        "model": "a",
        "model_path": identity.model_path,
        "launch": identity.launch,
        "created": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC).isoformat(),
        "eviction": "offload+checkpoint",
        "tp": identity.tp,
        "port": identity.port,
        "pids": pids,
        "shm_files": [],
        "listen_ports": [
            {"host": "127.0.0.1", "port": port} for port in (identity.port, *listening)
        ],
        "criu_version": CRIU_VERSION,
        "kernel": os.uname().release,
        "driver_version": driver_version(),
        "prebaked": True,
    }
    return images.publish(staging, target, fields)


def free_pid() -> int:
    return next(p for p in range(4_190_000, 4_194_304) if not Path(f"/proc/{p}").exists())


#: CRIU 4.2.1's log when a port the image listens on was taken after gpumux's check.
CRIU_PORT_TAKEN = (
    "exit 1: (00.051) 27140: Error (criu/sk-inet.c:1059): inet: Can't bind inet socket "
    "(id 166): Address already in use | Error (criu/files.c:1221): Unable to open fd=6 "
    "id=0xa6 | Error (criu/cr-restore.c:2331): Restoring FAILED."
)
#: What each fault's restore reports (its `RestoreFailure` reason in words).
FAULTS = {
    "corrupt": "sha256",
    "pid_collision": "the image's pids are taken",
    "port_busy": "ports the image listens on are in use",
    # One of the ports vLLM's tree listens on internally (ZMQ, torch), not the model's:
    "internal_port_busy": "ports the image listens on are in use",
    # Taken after the check, so CRIU itself finds it taken:
    "criu_port_busy": "Address already in use",
}


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_failed_restore_treats_the_image_by_whose_fault_it_was_then_cold_starts(
    fault: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    internal = socket.create_server(("127.0.0.1", 0))  # a port the tree listened on too
    internal_port = internal.getsockname()[1]
    if fault != "port_busy":
        listener.close()
    if fault != "internal_port_busy":
        internal.close()
    config = checkpoint_config(tmp_path, port)
    assert config.checkpoint is not None
    pids = [os.getpid()] if fault == "pid_collision" else [free_pid()]
    image = bake(config, Path(config.checkpoint.images_dir), pids, (internal_port,))
    if fault == "corrupt":
        (image.path / "pages-1.img").write_bytes(b"q" * 4096)  # same size, other bytes
    # Our own pid stays taken: no need to wait the usual seconds for it to be reaped.
    monkeypatch.setattr(checkpoints_module, "PID_FREE_WAIT_SECS", 0.0)
    reaped: list[list[int]] = []
    if fault == "criu_port_busy":
        wait_pids_free = checkpoints_module.wait_pids_free

        async def failing_restore(*_args: object, **_kwargs: object) -> int:
            raise criu.CriuError("restore", CRIU_PORT_TAKEN, returncode=1)

        async def reap(pids: list[int], wait_secs: float) -> dict[int, str]:
            reaped.append(pids)
            return await wait_pids_free(pids, wait_secs)

        # The seam where `criu restore` runs, and the wait for its leftovers' pids.
        monkeypatch.setattr(criu, "restore", failing_restore)
        monkeypatch.setattr(checkpoints_module, "wait_pids_free", reap)
    reserved = tmp_path / "ip_local_reserved_ports"
    reserved.write_text("\n")
    checkpoints = KnownCriu(config.checkpoint, log_dir=tmp_path / "logs", reserved_ports=reserved)
    await checkpoints.catalog.adopt_prebaked("a", image.path, lambda _manifest: [])
    # Adopting the image reserved its ports from the kernel's automatic choice.
    assert parse_ports(reserved.read_text()) == {port, internal_port}
    run = Run(alive=False)

    async def restore() -> None:  # what `Backends` does around the real restore
        try:
            await checkpoints.restore("a", ModelIdentity.of(config, "a"))
        except CheckpointFailed as exc:
            raise StepFailed("a", Step.CRIU_RESTORE, exc.detail) from exc

    run.effects.script("a", Step.CRIU_RESTORE, restore)
    try:
        outcome = await run.go(wake("offload+checkpoint", ModelState.CHECKPOINTED))
    finally:
        listener.close()
        internal.close()
    assert run.effects.steps("a") == [Step.CRIU_RESTORE, KILL, Step.COLD_START]
    assert outcome.result is OpResult.FALLBACK_COLD
    assert run.reported == [ModelState.STARTING]
    assert FAULTS[fault] in outcome.error
    assert checkpoints.catalog.entry("a").current is None  # never tried again this run
    quarantined = list(image.path.parent.glob(f"v1{images.QUARANTINE_MARK}*"))
    if fault == "corrupt":  # the image's fault: renamed aside, even though pre-baked
        assert not image.path.exists()
        assert len(quarantined) == 1
        assert "image quarantined" in outcome.error
    else:  # the host's: a pre-baked image stays where the config names it
        assert (image.path / images.MANIFEST).exists()
        assert quarantined == []
        assert outcome.error.endswith("(image left in place)")
        # ...and keeps its reservation: the next start restores it.
        assert parse_ports(reserved.read_text()) == {port, internal_port}
    held_by_us = f"(held by pid {os.getpid()} ("
    if fault == "port_busy":
        assert f"127.0.0.1:{port} {held_by_us}" in outcome.error
        assert str(internal_port) not in outcome.error
    if fault == "internal_port_busy":  # named, with who holds it; the model's port is free
        assert f"in use: 127.0.0.1:{internal_port} {held_by_us}" in outcome.error
        assert f":{port}" not in outcome.error
    if fault == "criu_port_busy":
        assert reaped == [pids]  # the failed restore's zombies are still reaped first
