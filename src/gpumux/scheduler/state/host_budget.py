"""The host-RAM budget: level-1 sleepers and suspended models pin host memory.

Owns: the latest host-memory reading, each model's estimate of the host RAM it pins
while asleep at level 1 or suspended (configured, else learned from the drop in available
memory across its first such eviction), what each model holds now, and the two guards of
ecosystem case 27. A vLLM process that has slept at level 1 once keeps its pinned backup
for its life (torch caches the pinned block; design §8): it holds that RAM while awake
too, a later level-1 sleep takes no new RAM (and teaches nothing about the pin), and
only level 2, a checkpoint or a stop gives it back. The guards:
- before an eviction that would pin host RAM below `host_memory.reserve_gib`, the oldest
  idle pinning sleepers are stopped first (and the eviction waits until a fresh reading
  shows their memory back); when they cannot free enough, the victim is evicted without
  pinning (level 2 instead of level 1, else a stop);
- a reading below the reserve (something else ate the RAM, or an estimate was unknown)
  stops the oldest pinning sleeper, one at a time, each confirmed by a fresh reading.
Why: a pinned sleeper is only a fast wake; an OOM kill of a backend or of gpumux loses
requests. Does not: read memory (the daemon's resource poller does and sends readings
in) or choose victims for the GPU (placement does). Pure: `now` is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpumux.core.config import GIB, EvictionConfig, ProcessStrategy, WeightStrategy
from gpumux.core.eviction import pins_host_memory, without_host_pin
from gpumux.scheduler.messages import OpKind
from gpumux.scheduler.state.models import M, Models
from gpumux.scheduler.state.outbox import Outbox
from gpumux.scheduler.state.slots import Slot


@dataclass
class _Pin:
    """What the budget knows of one model's pinned host RAM."""

    since: float | None = None  # asleep at level 1 / suspended since (host RAM held)
    measure_from: int | None = None  # host RAM available when its pinning eviction began
    learned_bytes: int | None = None  # measured host RAM its last pin took
    fresh: bool = False  # its last eviction allocated new pinned RAM (not a kept backup)


class HostBudget:
    def __init__(self, models: Models, reserve_bytes: int) -> None:
        self.reserve_bytes = reserve_bytes
        self.available: int | None = None
        self._models = models
        self._read_at: float | None = None
        self._fresh = False
        # Models stopped to free host RAM, kept until a reading taken after their stop
        # finished (pinning decisions wait for it: only then is the memory visibly back).
        self._freeing: set[str] = set()
        self._pins: dict[str, _Pin] = {}

    def reading(self, available_bytes: int, now: float) -> None:
        """A host-RAM reading: learn pins and forget confirmed stops (relief comes later)."""
        self.available = available_bytes
        self._read_at = now
        self._fresh = True
        slots = self._models.slots
        # A stop that has finished is now visible in the reading; one still running is not.
        self._freeing = {
            alias for alias in self._freeing if alias in slots and slots[alias].state is M.STOPPING
        }
        for slot in slots.values():
            self._learn(slot, available_bytes)

    def forget(self, alias: str) -> None:
        self._pins.pop(alias, None)

    # ---- estimates ---------------------------------------------------------------------

    def room_bytes(self) -> int | None:
        """Host RAM that may still be pinned above the reserve (None: no budget or no
        reading yet), net of the pins that evictions under way will take."""
        if self.reserve_bytes <= 0 or self.available is None:
            return None
        return self.available - self._pending_pins() - self.reserve_bytes

    def held_bytes(self, slot: Slot) -> int:
        """Host RAM `slot` pins right now (0 when none, or when not known yet)."""
        return (self.pin_estimate(slot) or 0) if _holds(slot) else 0

    def pin_estimate(self, slot: Slot) -> int | None:
        """Bytes `slot` pins while asleep at level 1 or suspended, if known."""
        if slot.config.host_memory_gib is not None:
            return int(slot.config.host_memory_gib * GIB)
        pin = self._pins.get(slot.alias)
        return pin.learned_bytes if pin is not None else None

    def _pin(self, slot: Slot) -> _Pin:
        return self._pins.setdefault(slot.alias, _Pin())

    def _learn(self, slot: Slot, available: int) -> None:
        pin = self._pin(slot)
        before = pin.measure_from
        if before is None or slot.state in (M.DRAINING, M.EVICTING):
            return  # the eviction has not finished yet
        pin.measure_from = None
        if _holds(slot):  # not stopped before this reading (awake or not: it holds the pin)
            pin.learned_bytes = max(0, before - available)

    def _pending_pins(self) -> int:
        """Host RAM that evictions under way, or finished since the last reading, will take."""
        slots = self._models.slots.values()
        return sum(self.pin_estimate(s) or 0 for s in slots if self._pin_pending(s))

    def _pin_pending(self, slot: Slot) -> bool:
        op = slot.op
        if op is not None:
            return op.kind is OpKind.EVICT and _takes_new_pin(slot, op.eviction)
        if not _pinned(slot) or not self._pin(slot).fresh:
            return False  # a level-1 sleep that reused its backup took no new RAM
        read_at, since = self._read_at, self._pin(slot).since
        return read_at is None or (since is not None and since > read_at)

    def _pinned_sleepers(self, *, exclude: str | None = None) -> list[Slot]:
        """Pinning sleepers that may be stopped, oldest first; those with demand last."""
        found = [
            s
            for s in self._models.slots.values()
            if _pinned(s) and s.op is None and s.alias not in (self._models.pinned, exclude)
        ]
        return sorted(found, key=lambda s: (bool(s.queue), self._pin(s).since or 0.0, s.alias))

    # ---- the guards ----------------------------------------------------------------------

    def safe_eviction(self, slot: Slot, now: float, out: Outbox) -> EvictionConfig | None:
        """The eviction to use for `slot` now, or None to wait for host RAM being freed."""
        eviction = slot.drain_eviction or slot.eviction
        if self.reserve_bytes <= 0 or not _takes_new_pin(slot, eviction):
            return eviction
        if self._freeing:
            return None
        need = self.pin_estimate(slot)
        if need is None or self.available is None:
            return eviction  # unknown: the reading guard catches what this cannot foresee
        deficit = self.reserve_bytes - (self.available - self._pending_pins() - need)
        if deficit <= 0:
            return eviction
        chosen: list[Slot] = []
        covered = 0
        for sleeper in self._pinned_sleepers(exclude=slot.alias):
            if sleeper.queue:
                continue  # about to wake, which frees its pin anyway
            estimate = self.pin_estimate(sleeper)
            if not estimate:
                continue
            chosen.append(sleeper)
            covered += estimate
            if covered >= deficit:
                for victim in chosen:
                    self._stop(victim, f"making room for `{slot.alias}`", now, out)
                return None
        downgraded = without_host_pin(eviction)
        out.note(
            "host_memory_downgrade",
            {
                "model": slot.alias,
                "eviction": str(eviction),
                "instead": str(downgraded),
                "available_bytes": self.available,
                "reserve_bytes": self.reserve_bytes,
            },
        )
        return downgraded

    def relieve_pressure(self, now: float, out: Outbox) -> None:
        """A fresh reading below the reserve stops the oldest pinning sleeper."""
        fresh, self._fresh = self._fresh, False
        if not fresh or self.reserve_bytes <= 0 or self.available is None:
            return
        if self.available >= self.reserve_bytes or self._freeing:
            return
        sleepers = self._pinned_sleepers()
        if sleepers:
            self._stop(sleepers[0], "host memory below the reserve", now, out)

    def _stop(self, slot: Slot, why: str, now: float, out: Outbox) -> None:
        out.note(
            "host_memory_pressure",
            {
                "model": slot.alias,
                "action": "stop",
                "why": why,
                "available_bytes": self.available,
                "reserve_bytes": self.reserve_bytes,
            },
        )
        slot.last_error = f"stopped to free host memory ({why})"
        self._freeing.add(slot.alias)
        self._models.stop_tree(slot, now, out)

    # ---- what evictions tell it ---------------------------------------------------------------

    def evicting(self, slot: Slot, eviction: EvictionConfig) -> None:
        """A pinning eviction starts: remember the reading before it, to learn its pin."""
        fresh = _takes_new_pin(slot, eviction)
        self._pin(slot).fresh = fresh
        self._pin(slot).measure_from = self.available if fresh else None

    def evicted(self, slot: Slot, now: float) -> None:
        """An eviction finished: a pinned rest starts its pin; anything else measures nothing."""
        pin = self._pin(slot)
        if _pinned(slot):
            pin.since = now
        else:
            pin.since = None
            pin.measure_from = None


def _takes_new_pin(slot: Slot, eviction: EvictionConfig) -> bool:
    """Whether evicting `slot` this way allocates host RAM it does not hold yet: a level-1
    sleep of a process that already slept at level 1 reuses its cached pinned backup."""
    if not pins_host_memory(eviction):
        return False
    return not (slot.l1_backup and eviction.process is ProcessStrategy.KEEP_RUNNING)


def _holds(slot: Slot) -> bool:
    """Whether `slot` holds pinned host RAM now: asleep pinned, or a level-1 backup kept."""
    return _pinned(slot) or (slot.l1_backup and slot.process_alive)


def _pinned(slot: Slot) -> bool:
    """Whether `slot` is asleep holding host RAM for its GPU state right now."""
    if slot.state is M.SUSPENDED:
        return True
    return slot.state is M.SLEEPING and slot.evicted_weights is WeightStrategy.OFFLOAD
