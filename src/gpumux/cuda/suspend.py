"""cuda_suspend: move every CUDA process of a model's tree to host memory, and back.

Owns: finding the CUDA-holding pids of a backend tree, driving them all at once through
lock → checkpoint (suspend) or restore → unlock (resume), checking with bounded retries
that every pid reached the target state, rolling back the pids already moved when any
fails, and choosing how the driver is reached (`open_checkpointer`: the driver API from
a long-lived helper, else the `cuda-checkpoint` CLI).
Does not: decide when to suspend (the orchestrator), talk to vLLM, or kill anything: a
failure raises `CudaSuspendFailed` and the orchestrator kills the tree and cold-starts.

Why phase by phase across pids, not pid by pid: with TP>1 every worker holds an NCCL
communicator, and one locked rank can hang calls to the others (NVIDIA/cuda-checkpoint
#30), so all ranks are locked before any is checkpointed, and all restored before any
is unlocked. Why verify: an action that returned success is not proof; `--get-state`
on every pid is (the same check llmux's suspend loop makes before it reports success).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from gpumux.core.config import CheckpointConfig, Config, ProcessStrategy
from gpumux.cuda.checkpointer import (
    Checkpointer,
    CheckpointError,
    CheckpointerUnavailable,
    CliCheckpointer,
    CudaState,
)
from gpumux.cuda.driver import DriverApiCheckpointer, driver_api_available
from gpumux.procs import Reaper, child_environment, tree_pids

log = structlog.get_logger(__name__)

SUSPEND = "cuda_suspend"
RESUME = "cuda_resume"


class CudaSuspendFailed(Exception):
    """A suspend or resume did not complete; what was moved has been rolled back."""

    def __init__(self, operation: str, detail: str, pids: Sequence[int]) -> None:
        super().__init__(f"{operation} of pids {list(pids)}: {detail}")
        self.operation = operation
        self.detail = detail
        self.pids = list(pids)


@dataclass(frozen=True)
class Phase:
    action: str
    source: CudaState
    target: CudaState


SUSPEND_PHASES = (
    Phase("lock", CudaState.RUNNING, CudaState.LOCKED),
    Phase("checkpoint", CudaState.LOCKED, CudaState.CHECKPOINTED),
)
RESUME_PHASES = (
    Phase("restore", CudaState.CHECKPOINTED, CudaState.LOCKED),
    Phase("unlock", CudaState.LOCKED, CudaState.RUNNING),
)


@dataclass(frozen=True)
class SuspendSettings:
    lock_timeout_ms: int = 30_000
    verify_attempts: int = 5
    verify_interval_secs: float = 0.2

    @classmethod
    def from_config(cls, config: CheckpointConfig) -> SuspendSettings:
        return cls(
            lock_timeout_ms=int(config.cuda_lock_timeout_secs * 1000),
            verify_attempts=config.cuda_verify_attempts,
            verify_interval_secs=config.cuda_verify_interval_secs,
        )


async def find_cuda_pids(
    root_pid: int, checkpointer: Checkpointer, *, proc_root: Path = Path("/proc")
) -> list[int]:
    """The pids of `root_pid`'s tree that hold CUDA state, root first.

    A pid holds CUDA state when the driver reports any state for it (`failed` included:
    a suspend must not pretend such a pid is gone). When the driver reports none at all,
    pids mapping `/dev/nvidia*` are returned instead, so the failure that follows names
    them rather than claiming the tree has no GPU process.
    """
    pids = await tree_pids(root_pid)
    if not pids:
        raise CudaSuspendFailed("discovery", f"process {root_pid} is gone", [root_pid])
    states = await _states(checkpointer, pids)
    found = [pid for pid in pids if states[pid] is not None]
    if found:
        return found
    return await asyncio.to_thread(_nvidia_mapped, pids, proc_root)


def _nvidia_mapped(pids: Sequence[int], proc_root: Path) -> list[int]:
    return [pid for pid in pids if maps_mention_nvidia(pid, proc_root)]


def maps_mention_nvidia(pid: int, proc_root: Path = Path("/proc")) -> bool:
    """Whether the process maps an NVIDIA device file (a CUDA context does)."""
    try:
        with open(proc_root / str(pid) / "maps", encoding="utf-8", errors="replace") as maps:
            return any("/dev/nvidia" in line for line in maps)
    except OSError:
        return False


async def _states(checkpointer: Checkpointer, pids: Sequence[int]) -> dict[int, CudaState | None]:
    answers = await asyncio.gather(*(checkpointer.get_state(pid) for pid in pids))
    return dict(zip(pids, answers, strict=True))


OpenCheckpointer = Callable[[], Awaitable[Checkpointer]]


def _succeeded(future: asyncio.Future[Checkpointer]) -> bool:
    return not future.cancelled() and future.exception() is None


class CudaSuspender:
    """Suspends and resumes the CUDA pids of backend trees through one `Checkpointer`."""

    def __init__(self, settings: SuspendSettings, open_checkpointer: OpenCheckpointer) -> None:
        self._settings = settings
        self._open = open_checkpointer
        self._opening: asyncio.Future[Checkpointer] | None = None

    async def checkpointer(self) -> Checkpointer:
        """Opened on first use, once, shared by concurrent callers; retried after a failure."""
        if self._opening is None or (self._opening.done() and not _succeeded(self._opening)):
            self._opening = asyncio.ensure_future(self._open())
        return await asyncio.shield(self._opening)

    async def suspend(self, model: str, root_pid: int) -> list[int]:
        """Suspend every CUDA pid of the tree; returns them (for the resume)."""
        return await self._run(model, SUSPEND, root_pid, ())

    async def resume(self, model: str, root_pid: int, pids: Sequence[int] = ()) -> list[int]:
        """Resume `pids` (those the suspend returned), or the tree's CUDA pids if none given."""
        return await self._run(model, RESUME, root_pid, pids)

    async def close(self) -> None:
        opening, self._opening = self._opening, None
        if opening is not None and opening.done() and _succeeded(opening):
            await opening.result().close()

    async def _run(
        self, model: str, operation: str, root_pid: int, known: Sequence[int]
    ) -> list[int]:
        started = time.monotonic()
        pids = list(known)
        try:
            checkpointer = await self.checkpointer()
            if pids:
                tree = set(await tree_pids(root_pid))
                missing = [pid for pid in pids if pid not in tree]
                if missing:
                    raise CudaSuspendFailed(operation, f"pids {missing} left the tree", pids)
            else:
                pids = await find_cuda_pids(root_pid, checkpointer)
                if not pids:
                    raise CudaSuspendFailed(
                        operation, f"no process in the tree of pid {root_pid} holds CUDA", []
                    )
            log.info("checkpoint_started", op=operation, model=model, pids=pids)
            await self._move(checkpointer, operation, pids)
        except (CheckpointError, CheckpointerUnavailable) as exc:
            failure = CudaSuspendFailed(operation, str(exc), pids)
            log.warning("checkpoint_failed", op=operation, model=model, error=str(failure))
            raise failure from exc
        except CudaSuspendFailed as exc:
            log.warning("checkpoint_failed", op=operation, model=model, error=str(exc))
            raise
        log.info(
            "checkpoint_finished",
            op=operation,
            model=model,
            pids=pids,
            via=checkpointer.name,
            duration_secs=round(time.monotonic() - started, 3),
        )
        return pids

    async def _move(self, cp: Checkpointer, operation: str, pids: list[int]) -> None:
        phases, target = (
            (SUSPEND_PHASES, CudaState.CHECKPOINTED)
            if operation == SUSPEND
            else (RESUME_PHASES, CudaState.RUNNING)
        )
        states = await _states(cp, pids)
        unusable = {pid: s for pid, s in states.items() if s is None or s is CudaState.FAILED}
        if unusable:
            described = ", ".join(f"{pid}: {s or 'no CUDA state'}" for pid, s in unusable.items())
            raise CudaSuspendFailed(operation, f"cannot act on {described}", pids)
        touched, errors = await self._apply(cp, pids, states, phases)
        if not errors:
            wrong = await self._verify(cp, pids, target)
            if not wrong:
                return
            errors = [
                f"pid {pid} is {state or 'without CUDA state'}, not {target.value}, after "
                f"{self._settings.verify_attempts} checks"
                for pid, state in wrong.items()
            ]
        detail = "; ".join(errors) + await self._rollback(cp, operation, touched)
        raise CudaSuspendFailed(operation, detail, pids)

    async def _apply(
        self,
        cp: Checkpointer,
        pids: Sequence[int],
        states: dict[int, CudaState | None],
        phases: Sequence[Phase],
    ) -> tuple[list[int], list[str]]:
        """Run each phase on every pid in its source state, all pids at once; stop at the
        first phase with a failure. Returns the pids that moved and the errors."""
        current = dict(states)
        touched: list[int] = []
        for phase in phases:
            todo = [pid for pid in pids if current[pid] is phase.source]
            results = await asyncio.gather(
                *(self._act(cp, phase.action, pid) for pid in todo), return_exceptions=True
            )
            errors = []
            for pid, result in zip(todo, results, strict=True):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                if isinstance(result, BaseException):
                    errors.append(str(result))
                    continue
                current[pid] = phase.target
                if pid not in touched:
                    touched.append(pid)
            if errors:
                return touched, errors
        return touched, []

    async def _act(self, cp: Checkpointer, action: str, pid: int) -> None:
        if action == "lock":
            await cp.lock(pid, self._settings.lock_timeout_ms)
        else:
            await getattr(cp, action)(pid)

    async def _verify(
        self, cp: Checkpointer, pids: Sequence[int], target: CudaState
    ) -> dict[int, CudaState | None]:
        """Pids not in `target` after `verify_attempts` checks `verify_interval_secs` apart."""
        wrong: dict[int, CudaState | None] = {}
        for attempt in range(self._settings.verify_attempts):
            if attempt:
                await asyncio.sleep(self._settings.verify_interval_secs)
            states = await _states(cp, pids)
            wrong = {pid: state for pid, state in states.items() if state is not target}
            if not wrong:
                return {}
        return wrong

    async def _rollback(self, cp: Checkpointer, operation: str, touched: list[int]) -> str:
        """Return the pids this operation moved to where they were; a note for the error."""
        if not touched:
            return ""
        phases = RESUME_PHASES if operation == SUSPEND else SUSPEND_PHASES
        try:
            states = await _states(cp, touched)
            live = [pid for pid in touched if states[pid] not in (None, CudaState.FAILED)]
            _, errors = await self._apply(cp, live, states, phases)
        except (CheckpointError, CheckpointerUnavailable) as exc:
            errors = [str(exc)]
        if errors:
            log.error("checkpoint_failed", op=f"{operation}_rollback", pids=touched, errors=errors)
            return f" (rollback of pids {touched} failed: {'; '.join(errors)})"
        return f" (pids {touched} rolled back)"


def suspender_for(
    config: CheckpointConfig,
    *,
    cli_path: str,
    reaper: Reaper,
    log_dir: Path,
    secret_names: Sequence[str] = (),
) -> CudaSuspender:
    """A suspender whose checkpointer (and driver helper) is opened on first use only.

    `secret_names`: every variable holding a gpumux secret (API keys, admin token, image
    key), kept out of the helper's environment like a backend's.
    """

    async def open_() -> Checkpointer:
        return await open_checkpointer(
            config, cli_path=cli_path, reaper=reaper, log_dir=log_dir, secret_names=secret_names
        )

    return CudaSuspender(SuspendSettings.from_config(config), open_)


#: NCCL's P2P and shared-memory transports map memory that cuda-checkpoint cannot move
#: (design §6, llmux §5.7); plain sockets survive a suspend.
NCCL_SAFE_ENV = {"NCCL_P2P_DISABLE": "1", "NCCL_SHM_DISABLE": "1"}


def nccl_safe_env(config: Config, alias: str) -> dict[str, str]:
    """What `alias`'s backend environment needs so its NCCL survives a suspend.

    Only for TP>1 with an eviction that toggles CUDA state (cuda_suspend, or CRIU through
    its CUDA plugin), unless the model sets `nccl_safe_env: false`; a variable the
    operator set in the model's `env` wins.
    """
    model = config.models[alias]
    try:
        tp = model.tensor_parallel_size
    except ValueError:
        return {}  # validation reports the bad flag
    process = config.eviction_for(alias).process
    if not model.nccl_safe_env or tp < 2:
        return {}
    if process not in (ProcessStrategy.CUDA_SUSPEND, ProcessStrategy.CHECKPOINT):
        return {}
    return {name: value for name, value in NCCL_SAFE_ENV.items() if name not in model.env}


async def open_checkpointer(
    config: CheckpointConfig,
    *,
    cli_path: str,
    reaper: Reaper,
    log_dir: Path,
    secret_names: Sequence[str] = (),
) -> Checkpointer:
    """The driver API helper when configured or available, else the CLI (design §6)."""
    cli = CliCheckpointer(
        cli_path, call_timeout_secs=config.cuda_checkpoint_timeout_secs, reaper=reaper
    )
    mode = config.cuda_checkpoint_api
    if mode == "cli":
        return cli
    available, why = driver_api_available()
    if not available and mode == "auto":
        log.info("cuda_checkpointer_selected", via=cli.name, reason=why)
        return cli
    driver = DriverApiCheckpointer(
        reaper=reaper,
        log_path=log_dir / "cuda-checkpoint-helper.log",
        call_timeout_secs=config.cuda_checkpoint_timeout_secs,
        # The helper needs no secrets: the same allow-list as a backend.
        env=child_environment(
            os.environ,
            model_env={},
            secret_names=[*secret_names, *config.secret_env_names],
            extra={},
        ),
    )
    try:
        await driver.start()
    except CheckpointerUnavailable as exc:
        if mode == "driver":
            raise
        log.warning("cuda_checkpointer_selected", via=cli.name, reason=str(exc))
        return cli
    log.info("cuda_checkpointer_selected", via=driver.name, reason=why)
    return driver
