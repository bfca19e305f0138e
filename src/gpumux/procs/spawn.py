"""Starting one backend process tree.

Owns: the `BackendProcess` record and `spawn_backend`, which forks `vllm serve` (or any
argv) with gpumux's process hygiene: own session (pgid == pid, so the tree can be
signalled as a group), stdin from /dev/null, stdout and stderr appended to a per-model
regular file (CRIU can dump and restore a file opened O_APPEND, not a pipe to a parent
that may be gone), no inherited descriptors, SIGKILL when gpumux dies, and a reaper
watch registered before anything else can run.
Does not: build argv or the environment (the caller, with `environment`), stop the
tree (`tree`), follow the log (`logtail`) or record the tree for a later sweep
(`registry`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import structlog

from gpumux.procs.errors import SpawnFailed
from gpumux.procs.prctl import parent_death_signal_preexec
from gpumux.procs.reaper import Reaper, release_popen

log = structlog.get_logger(__name__)

LOG_DIR_MODE = 0o700
LOG_FILE_MODE = 0o600


@dataclass(eq=False)
class BackendProcess:
    """One live (or just exited) backend tree, identified by its root.

    `exited` resolves with the root's exit code (-N: killed by signal N). It is shared
    by every consumer: await it through `asyncio.shield()` or `asyncio.wait()`, never
    cancel it (`asyncio.wait_for(proc.exited, ...)` would). `create_time` (psutil,
    seconds since the epoch) tells this process apart from a later one that reuses
    the pid. `log_offset` is the log file's size when the process started, where a
    `LogTail` for this process should begin. Each record logs `process_exited` once
    its root is reaped.
    """

    model: str
    pid: int
    pgid: int
    create_time: float
    log_path: Path
    exited: asyncio.Future[int] = field(repr=False)
    log_offset: int = 0
    reaper: Reaper | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.exited.add_done_callback(self._log_exit)

    def _log_exit(self, future: asyncio.Future[int]) -> None:
        if not future.cancelled():
            log.info("process_exited", model=self.model, pid=self.pid, exit_code=future.result())

    @property
    def returncode(self) -> int | None:
        """The root's exit code once reaped, else None."""
        if self.exited.done() and not self.exited.cancelled():
            return self.exited.result()
        return None


def spawn_backend(
    argv: Sequence[str],
    *,
    model: str,
    env: Mapping[str, str],
    log_path: Path,
    reaper: Reaper,
    cwd: Path | str | None = None,
) -> BackendProcess:
    """Start `argv` as a new backend tree for `model`; raise `SpawnFailed` if it cannot run.

    Must be called on the event-loop thread the Reaper is installed on: the
    parent-death signal follows the thread that forks (see `prctl`), and the reaper
    watch must be registered before the loop can process this child's SIGCHLD.
    `env` is used as is (build it with `child_environment`).
    """
    _require_loop_thread(reaper)
    args = list(argv)
    if not args:
        raise SpawnFailed(model, "empty command")
    log_fd = _open_log(log_path, model)
    try:
        log_offset = os.fstat(log_fd).st_size
        popen = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            env=dict(env),
            cwd=cwd,
            close_fds=True,
            start_new_session=True,
            preexec_fn=parent_death_signal_preexec(signal.SIGKILL),
        )
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise SpawnFailed(model, f"cannot execute {args[0]!r}: {exc.strerror}{where}") from exc
    except subprocess.SubprocessError as exc:
        raise SpawnFailed(model, f"cannot execute {args[0]!r}: {exc}") from exc
    finally:
        # The child has its own copies (stdout and stderr); ours would only leak.
        os.close(log_fd)
    pid = popen.pid
    # Same synchronous step as the fork, so the loop cannot have reaped the pid yet.
    exited = reaper.watch(pid, new_child=True)
    release_popen(popen)
    proc = BackendProcess(
        model=model,
        pid=pid,
        # start_new_session: the child is the leader of its own session and group.
        pgid=pid,
        create_time=_create_time(pid),
        log_path=log_path,
        exited=exited,
        log_offset=log_offset,
        reaper=reaper,
    )
    log.info("process_spawned", model=model, pid=pid, command=args[0], log_path=str(log_path))
    return proc


def _require_loop_thread(reaper: Reaper) -> None:
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is None or running is not reaper.loop:
        raise RuntimeError(
            "spawn_backend must run on the event-loop thread the Reaper is installed on "
            "(parent-death signals fire when the forking thread exits)"
        )


def _open_log(log_path: Path, model: str) -> int:
    try:
        # mode only applies to directories created here; an operator's existing log
        # directory keeps its permissions.
        log_path.parent.mkdir(mode=LOG_DIR_MODE, parents=True, exist_ok=True)
        # O_NONBLOCK so that a FIFO planted at this path fails (ENXIO) instead of
        # blocking the event loop until a reader appears.
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NONBLOCK
        fd = os.open(log_path, flags, LOG_FILE_MODE)
    except OSError as exc:
        raise SpawnFailed(model, f"cannot open log file {log_path}: {exc.strerror}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SpawnFailed(model, f"log file {log_path} is not a regular file")
    os.set_blocking(fd, True)
    return fd


def _create_time(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        # Cannot happen for an unreaped child; 0.0 never matches a live process, so
        # the registry's sweep would simply leave this pid alone.
        log.warning("create_time_unavailable", pid=pid)
        return 0.0
