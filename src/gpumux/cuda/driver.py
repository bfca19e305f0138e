"""`DriverApiCheckpointer`: the CUDA driver's checkpoint API through a long-lived helper.

Owns: deciding whether the driver API can be used here (`driver_api_available`),
starting and stopping the helper process (`gpumux.cuda.driver_helper`, spawned like a
backend: own session, log file, parent-death signal, reaped by the Reaper), and one
request per call over its Unix socket, each bounded by `cuda_checkpoint_timeout_secs`.
Does not: import `cuda.bindings` (only the helper does, so the daemon never loads
libcuda), order actions across pids or verify them (`cuda_suspend` does).

Honesty note: no GPU and no `cuda-bindings` exist where this was written. The process
handling and the protocol were exercised against `mock_vllm.cuda_driver` (a fake with
the same call shapes); the `cuda.bindings.driver` calls themselves were not run.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from gpumux.cuda.checkpointer import CheckpointError, CheckpointerUnavailable, CudaState
from gpumux.procs import BackendProcess, Reaper, SpawnFailed, kill_tree, spawn_backend

log = structlog.get_logger(__name__)

DEFAULT_DRIVER_MODULE = "cuda.bindings.driver"
NVIDIA_DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")
#: How often a starting helper is asked whether it answers yet.
START_POLL_SECS = 0.05
#: The helper holds no state worth a graceful stop.
STOP_GRACE_SECS = 1.0
HELPER_NAME = "cuda-checkpoint-helper"


def driver_api_available() -> tuple[bool, str]:
    """Whether `cuda.bindings` can be imported and an NVIDIA driver is loaded (and why not)."""
    try:
        found = importlib.util.find_spec("cuda.bindings") is not None
    except (ImportError, ValueError):
        found = False  # no `cuda` package at all
    if not found:
        return False, "cuda-bindings is not installed"
    if not NVIDIA_DRIVER_VERSION_FILE.exists():
        return False, "no NVIDIA kernel driver is loaded"
    return True, "cuda-bindings and an NVIDIA driver are present"


class DriverApiCheckpointer:
    """`Checkpointer` over `cuCheckpointProcess*`, called by the helper process."""

    name = "driver_api"

    def __init__(
        self,
        *,
        reaper: Reaper,
        log_path: Path,
        call_timeout_secs: float,
        driver_module: str = DEFAULT_DRIVER_MODULE,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._reaper = reaper
        self._log_path = log_path
        self._timeout = call_timeout_secs
        self._driver_module = driver_module
        self._env = dict(env) if env is not None else None
        self._process: BackendProcess | None = None
        self._socket_dir: str | None = None
        self._starting: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        """Start the helper if it is not running; raise `CheckpointerUnavailable` if it can't."""
        if self._process is not None and not self._process.exited.done():
            return
        if self._starting is None or self._starting.done():
            # One start shared by concurrent callers (no lock held across awaits).
            self._starting = asyncio.get_running_loop().create_task(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        await self.close()
        # Unix socket paths are limited to ~108 bytes, so not under a deep state_dir.
        self._socket_dir = tempfile.mkdtemp(prefix="gpumux-cuda-")
        socket_path = os.path.join(self._socket_dir, "helper.sock")
        argv = [sys.executable, "-m", "gpumux.cuda.driver_helper", "--socket", socket_path]
        argv += ["--driver", self._driver_module]
        try:
            process = spawn_backend(
                argv,
                model=HELPER_NAME,
                env=self._env if self._env is not None else dict(os.environ),
                log_path=self._log_path,
                reaper=self._reaper,
            )
        except SpawnFailed as exc:
            raise CheckpointerUnavailable(f"cannot start the driver helper: {exc}") from exc
        self._process = process
        try:
            async with asyncio.timeout(self._timeout):
                while not await self._answers_ping():
                    if process.exited.done():
                        raise CheckpointerUnavailable(
                            f"the driver helper exited with {process.exited.result()}: "
                            f"{self._last_log_line()}"
                        )
                    await asyncio.sleep(START_POLL_SECS)
        except TimeoutError:
            await self.close()
            raise CheckpointerUnavailable(
                f"the driver helper did not answer within {self._timeout:g} s"
            ) from None
        except CheckpointerUnavailable:
            await self.close()
            raise
        log.info("cuda_driver_helper_started", pid=process.pid, driver=self._driver_module)

    async def _answers_ping(self) -> bool:
        try:
            reply = await self._exchange({"op": "ping"})
        except OSError:
            return False
        return reply.get("ok") is True

    def _last_log_line(self) -> str:
        try:
            lines = self._log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no output"
        return lines[-1] if lines else "no output"

    # ---- Checkpointer ------------------------------------------------------------------

    async def get_state(self, pid: int) -> CudaState | None:
        reply = await self._call(pid, "get_state")
        if not reply.get("ok"):
            # The driver answers an error for a pid without CUDA state (or gone).
            return None
        try:
            return CudaState(str(reply.get("state")))
        except ValueError:
            raise CheckpointError(pid, "get_state", f"unexpected state {reply!r}") from None

    async def lock(self, pid: int, timeout_ms: int) -> None:
        self._check(pid, "lock", await self._call(pid, "lock", timeout_ms=timeout_ms))

    async def checkpoint(self, pid: int) -> None:
        self._check(pid, "checkpoint", await self._call(pid, "checkpoint"))

    async def restore(self, pid: int) -> None:
        self._check(pid, "restore", await self._call(pid, "restore"))

    async def unlock(self, pid: int) -> None:
        self._check(pid, "unlock", await self._call(pid, "unlock"))

    async def close(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            await kill_tree(process, grace_secs=STOP_GRACE_SECS)
        socket_dir, self._socket_dir = self._socket_dir, None
        if socket_dir is not None:
            shutil.rmtree(socket_dir, ignore_errors=True)

    # ---- the wire ----------------------------------------------------------------------

    @staticmethod
    def _check(pid: int, action: str, reply: dict[str, Any]) -> None:
        if not reply.get("ok"):
            code = reply.get("code")
            raise CheckpointError(
                pid,
                action,
                f"{reply.get('error', 'no error text')} (CUDA error {code})",
                code if isinstance(code, int) else None,
            )

    async def _call(self, pid: int, op: str, **fields: int) -> dict[str, Any]:
        await self.start()
        try:
            async with asyncio.timeout(self._timeout):
                return await self._exchange({"op": op, "pid": pid, **fields})
        except TimeoutError:
            # A driver call stuck in the helper would block every later one: start over.
            await self.close()
            raise CheckpointError(
                pid, op, f"no answer within cuda_checkpoint_timeout_secs={self._timeout:g}"
            ) from None
        except OSError as exc:
            await self.close()
            raise CheckpointError(pid, op, f"the driver helper went away: {exc}") from exc

    async def _exchange(self, request: dict[str, Any]) -> dict[str, Any]:
        if self._socket_dir is None:
            raise ConnectionRefusedError("the driver helper is not running")
        path = os.path.join(self._socket_dir, "helper.sock")
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
            await writer.wait_closed()
        if not line:
            raise ConnectionResetError("the driver helper closed the connection")
        try:
            reply = json.loads(line)
        except ValueError:
            raise ConnectionResetError(f"unreadable reply {line[:200]!r}") from None
        if not isinstance(reply, dict):
            raise ConnectionResetError(f"unexpected reply {reply!r}")
        return reply
