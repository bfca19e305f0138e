"""One process's CUDA checkpoint state, through NVIDIA's `cuda-checkpoint` command line.

Owns: the `Checkpointer` interface the suspend adapter drives (get the state; lock,
checkpoint, restore, unlock one pid), its errors, and `CliCheckpointer`, which runs the
`cuda-checkpoint` binary (or `mock-cuda-checkpoint`) through `procs.run_command`.
Does not: walk process trees, order actions across pids, verify or roll back
(`cuda_suspend` does), or talk to the driver API (`cuda_driver` does).

The CLI is the fallback: every call re-attaches to the driver, about 2.5 s on a real
host (peers §A6), which the driver-API helper avoids. The explicit action sequence
(lock with a timeout, then checkpoint; restore, then unlock) is used rather than
`--toggle` so a hung kernel makes `lock` time out and leave the process running, and
so every rank of a TP>1 model is locked before any is checkpointed.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Protocol

import structlog

from gpumux.procs import CommandFailedToStart, CommandTimeout, Reaper, run_command

log = structlog.get_logger(__name__)


class CudaState(StrEnum):
    """`cuda-checkpoint --get-state` answers (CUprocessState)."""

    RUNNING = "running"
    LOCKED = "locked"
    CHECKPOINTED = "checkpointed"
    FAILED = "failed"


class CheckpointError(Exception):
    """One action on one pid failed; `detail` is what the tool or driver said."""

    def __init__(self, pid: int, action: str, detail: str, code: int | None = None) -> None:
        super().__init__(f"pid {pid}: {action} failed: {detail}")
        self.pid = pid
        self.action = action
        self.detail = detail
        self.code = code


class CheckpointerUnavailable(Exception):
    """The tool or driver cannot be used at all (missing binary, no driver)."""


class Checkpointer(Protocol):
    """The driver's checkpoint calls on one pid, however they are reached."""

    name: str

    async def get_state(self, pid: int) -> CudaState | None:
        """The pid's state, or None when it holds no CUDA state (or is gone)."""

    async def lock(self, pid: int, timeout_ms: int) -> None: ...

    async def checkpoint(self, pid: int) -> None: ...

    async def restore(self, pid: int) -> None: ...

    async def unlock(self, pid: int) -> None: ...

    async def close(self) -> None: ...


class CliCheckpointer:
    """`cuda-checkpoint` run once per call; exit status 0 is the only success."""

    name = "cli"

    def __init__(
        self,
        path: str,
        *,
        call_timeout_secs: float,
        env: Mapping[str, str] | None = None,
        reaper: Reaper | None = None,
    ) -> None:
        self._path = path
        self._timeout = call_timeout_secs
        self._env = env
        self._reaper = reaper

    async def get_state(self, pid: int) -> CudaState | None:
        code, out, err = await self._run(pid, "get-state", "--get-state")
        if code != 0:
            # The tool answers a CUDA error for a process with no CUDA state (or none at
            # all); either way there is nothing of it to suspend.
            log.debug("cuda_get_state_refused", pid=pid, exit_code=code, stderr=err.strip())
            return None
        answer = out.strip()
        try:
            return CudaState(answer)
        except ValueError:
            raise CheckpointError(pid, "get-state", f"unexpected answer {answer!r}") from None

    async def lock(self, pid: int, timeout_ms: int) -> None:
        await self._action(pid, "lock", "--timeout", str(timeout_ms))

    async def checkpoint(self, pid: int) -> None:
        await self._action(pid, "checkpoint")

    async def restore(self, pid: int) -> None:
        await self._action(pid, "restore")

    async def unlock(self, pid: int) -> None:
        await self._action(pid, "unlock")

    async def close(self) -> None:
        return None

    async def _action(self, pid: int, action: str, *extra: str) -> None:
        code, out, err = await self._run(pid, action, "--action", action, *extra)
        if code != 0:
            said = (err.strip() or out.strip() or "no output").splitlines()[-1]
            raise CheckpointError(pid, action, f"exit status {code}: {said}", code)

    async def _run(self, pid: int, action: str, *args: str) -> tuple[int, str, str]:
        argv = [self._path, *args, "--pid", str(pid)]
        try:
            result = await run_command(
                argv, timeout=self._timeout, env=self._env, reaper=self._reaper
            )
        except CommandFailedToStart as exc:
            raise CheckpointerUnavailable(f"cannot run {self._path!r}: {exc}") from exc
        except CommandTimeout:
            raise CheckpointError(
                pid, action, f"no answer within cuda_checkpoint_timeout_secs={self._timeout:g}"
            ) from None
        return result.returncode, result.stdout, result.stderr
