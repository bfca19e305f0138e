"""The port-list syntax of `net.ipv4.ip_local_reserved_ports`, and how a list changes.

Owns: parsing the kernel's comma-separated ports and inclusive ranges ("8000,9000-9002";
empty for none) into a set, writing a set back in the shortest such form, and
`reconcile`: from the ports the host lists now, the ports gpumux wants kept and the ports
gpumux itself added earlier, the list to write and what is added or released.
Also `bound_ports`, the ports an image's restore binds (what is reserved for it).
Does not: read or write the host's file (`gpumux.checkpoint.reserved_ports` does that).

Entries someone else put there are never removed: only a port gpumux added (and that the
list still holds) is released, and only once no image needs it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

MAX_PORT = 65535


def parse_ports(text: str) -> frozenset[int]:
    """The ports listed in `text`; ValueError when it is not the kernel's syntax."""
    ports: set[int] = set()
    for item in text.replace("\n", ",").split(","):
        item = item.strip()
        if not item:
            continue
        low, dash, high = item.partition("-")
        first = _port(low)
        last = _port(high) if dash else first
        if last < first:
            raise ValueError(f"port range {item!r} runs backwards")
        ports.update(range(first, last + 1))
    return frozenset(ports)


def format_ports(ports: Iterable[int]) -> str:
    """`ports` as the kernel lists them: sorted, runs of consecutive ports as ranges."""
    items: list[str] = []
    ordered = sorted(set(ports))
    start = 0
    while start < len(ordered):
        end = start
        while end + 1 < len(ordered) and ordered[end + 1] == ordered[end] + 1:
            end += 1
        low, high = ordered[start], ordered[end]
        items.append(str(low) if low == high else f"{low}-{high}")
        start = end + 1
    return ",".join(items)


def bound_ports(port: int, listened: Iterable[int]) -> frozenset[int]:
    """The TCP ports an image's restore binds: the model's and its tree's listeners."""
    return frozenset(listened) | {port}


@dataclass(frozen=True)
class Change:
    """What `reconcile` decided: the whole list to write, and gpumux's part in it."""

    listed: frozenset[int]  # the host's list after the change
    added: frozenset[int]  # ports gpumux puts there now
    released: frozenset[int]  # ports gpumux added earlier and takes out now
    ours: frozenset[int]  # every port on the list that gpumux added (to release later)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.released)


def reconcile(present: frozenset[int], wanted: frozenset[int], ours: frozenset[int]) -> Change:
    """The list once `wanted` is reserved and gpumux's own ports it no longer wants are gone.

    A wanted port already listed by someone else stays theirs (never released by us); one
    of ours that someone else took off the list is not put back unless still wanted.
    """
    added = wanted - present
    released = (ours & present) - wanted
    return Change(
        listed=(present | added) - released,
        added=added,
        released=released,
        ours=(ours & present & wanted) | added,
    )


def _port(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError(f"{text!r} is not a port number")
    port = int(text)
    if port > MAX_PORT:
        raise ValueError(f"port {port} is above {MAX_PORT}")
    return port
