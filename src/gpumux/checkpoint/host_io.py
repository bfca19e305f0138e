"""Host-side chores around a CRIU dump or restore that wait on the world.

Owns: waiting (bounded) for a tree's TCP connections to close (its listening sockets,
for the manifest, come from the same scan) and for an image's pids to be free, looking
whether the addresses a restore binds are free (and who holds a taken one), copying
/dev/shm segments in and out of an image (`sparse_copy` in a thread, all of a tree's
segments at once: vLLM's are hundreds of MB of mostly holes), and reading the NVIDIA
driver version for the manifest.
Does not: decide anything; `checkpoints` calls these and interprets the results.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

from gpumux.checkpoint import sparse_copy
from gpumux.checkpoint.criu_inventory import port_holders, port_is_free, taken_pids, tcp_sockets

#: How often a dump looks whether the tree's connections closed.
POLL_SECS = 0.05
#: How often a restore looks whether the image's pids are free: the Reaper collects a
#: dumped tree's zombies within milliseconds of SIGCHLD, and the restore waits on that.
PID_POLL_SECS = 0.005
COPY_TIMEOUT_SECS = 120.0
NVIDIA_VERSION = Path("/proc/driver/nvidia/version")
#: Where an image keeps the /dev/shm files of its tree.
SHM_SUBDIR = "shm"


class CopyFailed(OSError):
    pass


#: A TCP address a restore must be able to bind: (host, port).
Address = tuple[str, int]


async def quiet_tcp_after(pids: list[int], wait_secs: float) -> tuple[list[str], list[Address]]:
    """Wait up to `wait_secs` for every non-listening TCP socket of `pids` to close.

    Returns what is still open (empty when the tree is quiet) and, from the same last
    scan, the tree's listening sockets. Closing our pooled connections sends FIN at once,
    but the backend closes its end a moment later, and a socket still in CLOSE_WAIT is as
    fatal to a dump as an established one.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_secs
    while True:
        left, listening = await asyncio.to_thread(tcp_sockets, pids)
        if not left or loop.time() >= deadline:
            return left, listening
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
        await asyncio.sleep(PID_POLL_SECS)


def restore_addresses(port: int, listened: Iterable[Address]) -> list[Address]:
    """What a restore binds: the model's port on loopback (all an image made before
    listeners were recorded is checked for) and every socket the tree listened on."""
    wanted: list[Address] = [("127.0.0.1", port)]
    wanted += [address for address in dict.fromkeys(listened) if address not in wanted]
    return wanted


async def pids_and_ports_free(
    pids: list[int], addresses: list[Address], wait_secs: float
) -> tuple[dict[int, str], list[Address]]:
    """The image's pids still taken (after waiting up to `wait_secs` for them) and which
    of `addresses` (the model's port, the tree's listening sockets) cannot be bound now.
    Both looks go in one thread hop: on a busy host each hop costs milliseconds of
    scheduling, and usually all are free at the first look."""
    taken, busy = await asyncio.to_thread(_look, pids, addresses)
    if taken:
        taken = await wait_pids_free(pids, wait_secs)
        busy = await asyncio.to_thread(busy_addresses, addresses)
    return taken, busy


def _look(pids: list[int], addresses: list[Address]) -> tuple[dict[int, str], list[Address]]:
    return taken_pids(pids), busy_addresses(addresses)


def busy_addresses(addresses: list[Address]) -> list[Address]:
    return [(host, port) for host, port in addresses if not port_is_free(port, host)]


async def describe_busy(busy: list[Address]) -> str:
    """`busy` as `host:port (held by pid N (name))`, for an operator to act on."""
    holders = await asyncio.to_thread(port_holders, [port for _host, port in busy])
    parts = []
    for host, port in busy:
        held = holders.get(port)
        shown = f"[{host}]" if ":" in host else host
        parts.append(f"{shown}:{port}" + (f" (held by {', '.join(held)})" if held else ""))
    return ", ".join(parts)


def shm_copy_name(path: str) -> str:
    """Where an image keeps the copy of one /dev/shm file (relative to the image)."""
    return f"{SHM_SUBDIR}/{Path(path).name}"


async def copy_sparse(source: Path | str, target: Path | str) -> None:
    """Copy one file keeping its holes, mode and ownership; raise CopyFailed."""
    try:
        async with asyncio.timeout(COPY_TIMEOUT_SECS):
            await asyncio.to_thread(sparse_copy.copy, Path(source), Path(target))
    except TimeoutError:
        raise CopyFailed(f"copying {source} took over {COPY_TIMEOUT_SECS:g}s") from None
    except OSError as exc:
        raise CopyFailed(f"copying {source} to {target}: {exc}") from exc


async def copy_all(pairs: list[tuple[Path, Path]]) -> None:
    """`copy_sparse` every (source, target) at once (a tree has a few segments)."""
    await asyncio.gather(*(copy_sparse(source, target) for source, target in pairs))


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
