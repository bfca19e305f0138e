"""Host-side chores around a CRIU dump or restore that wait on the world.

Owns: waiting (bounded) for a tree's TCP connections to close and for an image's pids
to be free, copying /dev/shm segments in and out of an image (`cp --sparse=always`
through `run_command`: vLLM's segments are mostly holes), and reading the NVIDIA
driver version for the manifest.
Does not: decide anything; `checkpoints` calls these and interprets the results.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from gpumux.checkpoint.criu_inventory import open_tcp, taken_pids
from gpumux.procs import CommandFailedToStart, CommandTimeout, run_command

POLL_SECS = 0.05
COPY_TIMEOUT_SECS = 120.0
NVIDIA_VERSION = Path("/proc/driver/nvidia/version")
#: Where an image keeps the /dev/shm files of its tree.
SHM_SUBDIR = "shm"


class CopyFailed(OSError):
    pass


async def open_tcp_after(pids: list[int], wait_secs: float) -> list[str]:
    """Wait up to `wait_secs` for every non-listening TCP socket of `pids` to close.

    Returns what is still open (empty when the tree is quiet). Closing our pooled
    connections sends FIN at once, but the backend closes its end a moment later, and a
    socket still in CLOSE_WAIT is as fatal to a dump as an established one.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_secs
    while True:
        left = await asyncio.to_thread(open_tcp, pids)
        if not left or loop.time() >= deadline:
            return left
        await asyncio.sleep(POLL_SECS)


async def wait_pids_free(pids: list[int], wait_secs: float) -> dict[int, str]:
    """Wait up to `wait_secs` until none of `pids` exists; return the ones still taken.

    A dumped tree's members are our zombies for a moment after CRIU kills them; the
    Reaper collects them on SIGCHLD, and only then can a restore recreate those pids.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_secs
    while True:
        taken = await asyncio.to_thread(taken_pids, pids)
        if not taken or loop.time() >= deadline:
            return taken
        await asyncio.sleep(POLL_SECS)


def shm_copy_name(path: str) -> str:
    """Where an image keeps the copy of one /dev/shm file (relative to the image)."""
    return f"{SHM_SUBDIR}/{Path(path).name}"


async def copy_sparse(source: Path | str, target: Path | str) -> None:
    """`cp --sparse=always` with mode and ownership; raise CopyFailed."""
    Path(target).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    argv = ["cp", "--sparse=always", "--preserve=mode,ownership", str(source), str(target)]
    try:
        result = await run_command(argv, timeout=COPY_TIMEOUT_SECS)
    except (CommandFailedToStart, CommandTimeout) as exc:
        raise CopyFailed(str(exc)) from exc
    if result.returncode != 0:
        raise CopyFailed(f"cp {source} {target}: {result.stderr.strip()[:300]}")


def driver_version() -> str | None:
    """The NVIDIA kernel module's version, or None on hosts without one."""
    try:
        first = NVIDIA_VERSION.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    for word in first.split():
        if word[:1].isdigit() and "." in word:
            return word
    return first.strip() or None
