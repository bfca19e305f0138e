"""Exceptions raised by the backend process adapter.

Owns: the failures of spawning, adopting, killing and running child processes, each
carrying the model (or command) it concerns. Library errors (OSError, psutil.Error,
subprocess.SubprocessError) are wrapped into these at the adapter's boundary.
Does not: decide what a client sees; the scheduler maps these onto `gpumux.core.errors`.
"""

from __future__ import annotations

from collections.abc import Sequence


class ProcsError(Exception):
    """Root of every error the process adapter raises on purpose."""


class SpawnFailed(ProcsError):
    """A backend could not be started at all (missing executable, bad cwd, ...)."""

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(f"cannot start backend for model {model!r}: {reason}")
        self.model = model
        self.reason = reason


class AdoptFailed(ProcsError):
    """A pid handed to `adopt()` is not a live child of this process."""

    def __init__(self, model: str, pid: int, reason: str) -> None:
        super().__init__(f"cannot adopt pid {pid} for model {model!r}: {reason}")
        self.model = model
        self.pid = pid
        self.reason = reason


class KillTreeStuck(ProcsError):
    """SIGKILL was sent, but the tree did not go away within the deadline.

    Usually a process in uninterruptible sleep (a GPU driver call). The pids are still
    there, so nothing that needs them gone (a CRIU restore, a cold start on the same
    port) can proceed safely.
    """

    def __init__(self, model: str, pids: Sequence[int]) -> None:
        super().__init__(f"process tree of model {model!r} survived SIGKILL: pids {list(pids)}")
        self.model = model
        self.pids = list(pids)


class CommandFailedToStart(ProcsError):
    """`run_command` could not execute its program."""

    def __init__(self, argv: Sequence[str], reason: str) -> None:
        super().__init__(f"cannot run {argv[0]!r}: {reason}")
        self.argv = list(argv)
        self.reason = reason


class CommandTimeout(ProcsError):
    """`run_command` hit its deadline; the command's process group was SIGKILLed."""

    def __init__(self, argv: Sequence[str], timeout: float, stdout: str, stderr: str) -> None:
        super().__init__(f"{argv[0]!r} did not finish within {timeout:g} s and was killed")
        self.argv = list(argv)
        self.timeout = timeout
        self.stdout = stdout
        self.stderr = stderr
