"""Linux `prctl(2)` knobs that keep the process tree tidy.

Owns: marking gpumux as a child subreaper, and the `preexec_fn` that gives a child a
parent-death signal.
Does not: spawn, wait for or kill anything (see `spawn`, `reaper`, `tree`).

Both knobs are Linux-only; elsewhere `set_child_subreaper()` returns False and the
preexec hook only performs the parent check.

Parent-death signals are tied to the *thread* that forked the child, not to the
process: the kernel sends the signal when that thread exits. A child forked from an
`asyncio.to_thread` worker would be SIGKILLed as soon as the executor retires that
worker. Spawning therefore happens on the event-loop thread only (`spawn_backend`
checks this), which lives as long as gpumux does.

A `preexec_fn` runs Python between fork and exec, which the subprocess docs call
unsafe with threads. It is sound here because the forking thread holds the GIL, glibc
makes malloc fork-safe, and the hook only makes two system calls through a function
pointer resolved beforehand.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

# From <linux/prctl.h>.
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return prctl


# Resolved once, in the parent: the preexec hook runs between fork and exec, where
# loading a shared library (and the allocation it implies) is best avoided.
_prctl = _load_prctl()


def set_child_subreaper() -> bool:
    """Make orphaned descendants of this process get reparented to it instead of init.

    Needed so that a CRIU-restored tree, and grandchildren whose parent died, stay
    visible to (and are reaped by) gpumux. Returns False where unsupported.
    """
    if _prctl is None:
        return False
    return _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def is_child_subreaper() -> bool:
    """Whether this process currently is a child subreaper."""
    if _prctl is None:
        return False
    flag = ctypes.c_int(0)
    if _prctl(PR_GET_CHILD_SUBREAPER, ctypes.addressof(flag), 0, 0, 0) != 0:
        return False
    return flag.value != 0


#: Written to each backend's /proc/self/oom_score_adj before exec (systemd/gpumux.service).
CHILD_OOM_SCORE_ADJ = b"500"


def parent_death_signal_preexec(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """Return a `preexec_fn` that makes the child receive `sig` when its parent dies.

    Must be built and used on the thread that calls Popen (see the module docstring).
    The hook also closes the race where the parent dies between fork and prctl: the
    signal would then never come, so the child checks that its parent is still the
    process that built the hook, and exits otherwise.
    """
    expected_parent = os.getpid()
    prctl = _prctl
    signum = int(sig)

    def preexec() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != expected_parent:
            os._exit(1)
        # Children inherit gpumux's OOMScoreAdjust=-500; under memory pressure the kernel
        # must pick a model, not the supervisor. Raising the score needs no privilege.
        try:
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
            try:
                os.write(fd, CHILD_OOM_SCORE_ADJ)
            finally:
                os.close(fd)
        except OSError:
            pass

    return preexec
