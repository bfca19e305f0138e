"""Keep the ports a CRIU image's tree listens on out of the kernel's automatic choice.

Owns: the host's `net.ipv4.ip_local_reserved_ports` as far as gpumux's images need it:
which held image needs which ports, reading the list, adding the ports held images need
(merged with the entries already there), releasing the ones gpumux added once no held
image needs them, and one log line per change.
Does not: decide which images are held (`catalog` says so), check that a port is free
before a restore (`criu_inventory.port_is_free`), or parse the list's syntax
(`gpumux.core.port_ranges`).

Why: a vLLM tree listens on a dozen loopback ports the kernel picked from the ephemeral
range (ZMQ, torch.distributed) besides its API port. Between a dump and a restore they
are free, so any `bind(0)` or outgoing connection on the host may be handed one, and
`criu restore` then fails with "Address already in use". A reserved port is never
handed out automatically, while an explicit bind to it (CRIU's, the restored tree's)
still works.

Lifetime: a dynamic image's reservation ends with the image (pruned, replaced, removed
after a restore, quarantined) and with this process, since no later start restores a
dynamic image. A pre-baked image's outlives the process on purpose: the image stays on
disk and the next start restores it, so its ports must stay unassigned in between. The
next start sees them already listed and treats them as not its own (it cannot tell who
put them there), so it never releases them; an operator removes them with the sysctl.
Only root may write the file: elsewhere this logs once and does nothing, and a port
taken anyway is caught before the restore as `port_busy` (the image left in place).

Two processes changing the list at the same moment may lose one's addition (the kernel
offers no read-modify-write); the restore-time check still covers that port.
Synchronous and cheap (one small /proc file, no disk): called inline.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import structlog

from gpumux.core.port_ranges import format_ports, parse_ports, reconcile

log = structlog.get_logger(__name__)

RESERVED_PORTS = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")
#: The kernel reads at most a page less one byte of one write: a longer list would be
#: cut short and lose entries, so it is never written.
MAX_WRITE = 4095


class PortReservations:
    """The reserved ports the images this process holds need; see the module docstring."""

    def __init__(self, path: Path = RESERVED_PORTS) -> None:
        self.path = path
        self._needs: dict[Path, frozenset[int]] = {}
        self._lasting: set[Path] = set()
        self._ours: frozenset[int] = frozenset()
        self._usable = True

    @property
    def ours(self) -> frozenset[int]:
        """The ports on the list that this process put there."""
        return self._ours

    def need(self, image: Path, ports: Iterable[int], *, lasting: bool) -> None:
        """`image` is held and needs `ports`; `lasting` ones outlive the process."""
        self._needs[image] = frozenset(ports)
        if lasting:
            self._lasting.add(image)
        else:
            self._lasting.discard(image)
        self._sync()

    def drop(self, *gone: Path) -> None:
        """These images are no longer held (removed, replaced or moved aside)."""
        for image in gone:
            self._needs.pop(image, None)
            self._lasting.discard(image)
        self._sync()

    def close(self) -> None:
        """At exit: release what only dynamic images needed; pre-baked ones keep theirs."""
        self.drop(*(image for image in self._needs if image not in self._lasting))

    def _sync(self) -> None:
        wanted = frozenset().union(*self._needs.values())
        if not self._usable or not (wanted or self._ours):
            return
        if not os.access(self.path, os.W_OK):
            self._unusable("not writable (needs root)")
            return
        try:
            present = parse_ports(self.path.read_text())
        except (OSError, ValueError) as exc:
            self._unusable(f"unreadable: {exc}")
            return
        change = reconcile(present, wanted, self._ours)
        if not change.changed:
            self._ours = change.ours
            return
        text = format_ports(change.listed)
        if len(text) >= MAX_WRITE:
            self._unusable(f"the list would be {len(text)} characters, over what one write takes")
            return
        try:
            # Newline-terminated, in one write: the kernel replaces the whole list with it.
            self.path.write_text(text + "\n")
        except OSError as exc:
            self._unusable(f"write failed: {exc}")
            return
        self._ours = change.ours
        log.info(
            "ports_reserved",
            reserved=format_ports(change.added),
            released=format_ports(change.released),
            gpumux_holds=format_ports(self._ours),
            path=str(self.path),
        )

    def _unusable(self, why: str) -> None:
        self._usable = False
        log.warning(
            "ports_not_reserved",
            path=str(self.path),
            error=why,
            consequence="an image's listening port taken before its restore ends as "
            "port_busy (cold start, image left in place)",
        )
