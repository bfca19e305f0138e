"""The one owner of `waitpid` in gpumux, and the helper that runs short commands through it.

Owns: reaping every child of this process (backends, commands, CRIU-restored trees and,
because gpumux is a child subreaper, orphans reparented to it), turning wait statuses
into exit codes, and delivering them to whoever watches a pid. Also `run_command`, the
only sanctioned way to run a short-lived helper (criu, cuda-checkpoint) to completion.
Does not: start backends (`spawn`), kill trees (`tree`) or decide anything from an exit.

Why not asyncio's subprocess API: it installs a child watcher that calls
`waitpid(pid)` for its own children, while this reaper calls `waitpid(-1)` for all of
them; whichever runs first steals the other's status (asyncio then reports 255, we
would miss an exit). For the same reason nothing in gpumux may call
`subprocess.run`/`Popen.wait`/`os.wait*` once the reaper is installed: every child,
short-lived or not, goes through `spawn_backend` or `run_command`.

SIGCHLD is coalesced by the kernel (many exits, one signal), so each signal drains all
zombies. A status can arrive before anyone watches the pid (a CRIU-restored root that
dies at once, or a test that polls); such exits are kept in a bounded cache and handed
to the first later `watch()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import structlog

from gpumux.procs.errors import CommandFailedToStart, CommandTimeout
from gpumux.procs.prctl import parent_death_signal_preexec

log = structlog.get_logger(__name__)

# How many exits nobody has claimed yet we remember; orphans land here too, so the
# bound keeps a long-lived daemon from growing without limit.
UNCLAIMED_EXITS_MAX = 1024

# After SIGKILLing a timed-out command, how long to wait for its root to be reaped.
COMMAND_KILL_WAIT_SECS = 5.0

_current: Reaper | None = None


class Reaper:
    """Reaps every child of the process on SIGCHLD and resolves futures with exit codes.

    Exit codes follow `subprocess`: >= 0 is the exit status, -N means killed by signal N.
    One instance per process, installed on the event loop that spawns the children.
    Every method must be called on that loop's thread.
    """

    def __init__(self, *, unclaimed_max: int = UNCLAIMED_EXITS_MAX) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[int, list[asyncio.Future[int]]] = {}
        self._unclaimed: OrderedDict[int, int] = OrderedDict()
        self._unclaimed_max = unclaimed_max
        self._previous_sigchld: signal._HANDLER = signal.SIG_DFL

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("Reaper is not installed on an event loop")
        return self._loop

    @property
    def installed(self) -> bool:
        return self._loop is not None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start handling SIGCHLD on `loop` (must be the main thread's running loop)."""
        global _current
        if self._loop is not None:
            raise RuntimeError("Reaper is already installed")
        if _current is not None and _current._loop is not None and not _current._loop.is_closed():
            raise RuntimeError("another Reaper is installed; there is one per process")
        # signal.signal rather than loop.add_signal_handler: uvloop (the daemon's loop)
        # refuses SIGCHLD there, as libuv would use it for processes it spawns (gpumux
        # spawns none through the loop). The handler only schedules the reap on the loop,
        # as add_signal_handler does; SA_RESTART as asyncio sets it.
        self._previous_sigchld = signal.signal(signal.SIGCHLD, self._on_sigchld)
        signal.siginterrupt(signal.SIGCHLD, False)
        self._loop = loop
        _current = self
        # A child that exited before the handler existed sent its SIGCHLD to nobody.
        loop.call_soon(self._reap_all)

    def uninstall(self) -> None:
        """Stop handling SIGCHLD. Exits already pending are collected one last time.

        Futures of pids still running stay unresolved: nothing reaps them any more.
        """
        global _current
        loop = self._loop
        if loop is None:
            return
        self._reap_all()
        signal.signal(signal.SIGCHLD, self._previous_sigchld)
        self._loop = None
        if _current is self:
            _current = None

    def watch(self, pid: int, *, new_child: bool = False) -> asyncio.Future[int]:
        """A future resolved with `pid`'s exit code once it is reaped.

        Each call gets its own future, so one watcher cancelling does not affect
        another. If `pid` was reaped before anyone watched it, the cached exit is
        delivered at once (to the first such watcher only).

        `new_child=True` says the caller knows `pid` is a live, unreaped child right
        now (it was just forked on this thread, or seen alive): any cached exit for
        that number belongs to an earlier process that had the same pid, and is dropped.
        """
        future: asyncio.Future[int] = self.loop.create_future()
        if new_child:
            self._unclaimed.pop(pid, None)
        elif pid in self._unclaimed:
            future.set_result(self._unclaimed.pop(pid))
            return future
        self._waiters.setdefault(pid, []).append(future)
        future.add_done_callback(lambda f: self._forget_waiter(pid, f))
        return future

    async def reap_now(self) -> None:
        """Collect every exited child once, without waiting for SIGCHLD (for tests)."""
        self._reap_all()

    def _forget_waiter(self, pid: int, future: asyncio.Future[int]) -> None:
        # Resolved futures were already popped by _deliver; this drops cancelled ones.
        waiters = self._waiters.get(pid)
        if waiters is None or future not in waiters:
            return
        waiters.remove(future)
        if not waiters:
            del self._waiters[pid]

    def _on_sigchld(self, _signum: int, _frame: object) -> None:
        # Runs in the main thread between two bytecodes, so it only schedules.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._reap_all)

    def _reap_all(self) -> None:
        if self._loop is None:
            return
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return  # no children at all
            if pid == 0:
                return  # children exist, none has exited
            self._deliver(pid, os.waitstatus_to_exitcode(status))

    def _deliver(self, pid: int, code: int) -> None:
        waiters = self._waiters.pop(pid, None)
        live = [f for f in waiters or () if not f.done()]
        for future in live:
            future.set_result(code)
        if live:
            log.debug("child_reaped", pid=pid, exit_code=code)
            return
        self._unclaimed[pid] = code
        self._unclaimed.move_to_end(pid)
        while len(self._unclaimed) > self._unclaimed_max:
            self._unclaimed.popitem(last=False)
        # Nobody is waiting for this pid: a descendant reparented to us because its
        # parent died (we are a subreaper), a restored process not adopted yet, or a
        # child whose watchers all gave up.
        log.info("orphan_reaped", pid=pid, exit_code=code)


def current_reaper() -> Reaper:
    """The Reaper installed in this process."""
    if _current is None or _current._loop is None:
        raise RuntimeError("no Reaper is installed")
    return _current


def release_popen(popen: subprocess.Popen[bytes]) -> None:
    """Stop `popen` from ever calling waitpid on its pid; the Reaper owns that now.

    `Popen` is only our fork/exec primitive. Left alone, its finalizer would warn that
    the child still runs and park it in `subprocess._active`, whose next poll calls
    `waitpid(pid)` and could steal the status from the Reaper (or, after pid reuse,
    reap a stranger). A non-None returncode turns both off.
    """
    popen.returncode = 0


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


async def run_command(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    reaper: Reaper | None = None,
) -> CommandResult:
    """Run `argv` to completion and return its exit code and output.

    The command gets its own session (so a timeout can kill everything it started in
    its process group), stdin from /dev/null, and a parent-death signal. Output goes
    to anonymous temporary files rather than pipes, so a chatty command can never
    block on a full pipe while we wait for it. `env=None` inherits gpumux's
    environment. On timeout the group is SIGKILLed, reaped (bounded) and
    `CommandTimeout` raised with the output so far; on cancellation the group is
    SIGKILLed before the cancellation propagates.

    Processes the command moves out of its own group (a tree `criu restore` recreates
    with its original pgid) are not killed here; the caller knows their pids.
    """
    reaper = reaper if reaper is not None else current_reaper()
    args = list(argv)
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid, exited = _start_command(args, out, err, env, cwd, reaper)
        try:
            async with asyncio.timeout(timeout):
                # shield: the timeout must not cancel `exited`, we still need the reap.
                code = await asyncio.shield(exited)
        except TimeoutError:
            _kill_group(pid, exited)
            await asyncio.wait({exited}, timeout=COMMAND_KILL_WAIT_SECS)
            stdout, stderr = await asyncio.to_thread(_read_outputs, out, err)
            log.warning("command_timed_out", command=args[0], pid=pid, timeout_secs=timeout)
            raise CommandTimeout(args, timeout, stdout, stderr) from None
        except BaseException:
            _kill_group(pid, exited)
            raise
        stdout, stderr = await asyncio.to_thread(_read_outputs, out, err)
    log.debug(
        "command_finished",
        command=args[0],
        pid=pid,
        exit_code=code,
        duration_secs=round(time.monotonic() - started, 3),
    )
    return CommandResult(code, stdout, stderr)


def _start_command(
    args: list[str],
    out: IO[bytes],
    err: IO[bytes],
    env: Mapping[str, str] | None,
    cwd: Path | str | None,
    reaper: Reaper,
) -> tuple[int, asyncio.Future[int]]:
    # Synchronous on purpose: fork, exec and watch() in one step of the loop, so the
    # Reaper cannot see this child's exit before it is watched.
    try:
        popen = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=cwd,
            close_fds=True,
            start_new_session=True,
            preexec_fn=parent_death_signal_preexec(),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise CommandFailedToStart(args, _describe(exc)) from exc
    exited = reaper.watch(popen.pid, new_child=True)
    release_popen(popen)
    return popen.pid, exited


def _kill_group(pgid: int, exited: asyncio.Future[int]) -> None:
    # Once the leader is reaped its number may be reused; only signal while it is ours.
    if exited.done():
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _read_outputs(out: IO[bytes], err: IO[bytes]) -> tuple[str, str]:
    texts = []
    for stream in (out, err):
        stream.seek(0)
        texts.append(stream.read().decode(errors="replace"))
    return texts[0], texts[1]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc) or type(exc).__name__
