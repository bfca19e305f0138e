"""The scheduler core's host-RAM budget: level-1 sleepers and suspended models pin memory.

Owns: the latest host-memory reading, each model's estimate of the host RAM it pins
while asleep at level 1 or suspended (configured, else learned from the drop in available
memory across its last such eviction), and the two guards of ecosystem case 27:
- before an eviction that would pin host RAM below `host_memory.reserve_gib`, the oldest
  idle pinning sleepers are stopped first (and the eviction waits until a fresh reading
  shows their memory back); when they cannot free enough, the victim is evicted without
  pinning (level 2 instead of level 1, else a stop);
- a reading below the reserve (something else ate the RAM, or an estimate was unknown)
  stops the oldest pinning sleeper, one at a time, each confirmed by a fresh reading.
Why: a pinned sleeper is only a fast wake; an OOM kill of a backend or of gpumux loses
requests. Does not: read memory (the daemon's resource poller does and sends readings
in). Pure: `now` is passed in.
"""

from __future__ import annotations

from gpumux.core.config import EvictionConfig, WeightStrategy
from gpumux.core.eviction import Step, pins_host_memory, without_host_pin
from gpumux.scheduler.messages import Command, Note, OpKind
from gpumux.scheduler.state.base import GIB, CoreBase, M
from gpumux.scheduler.state.slots import Slot


class CoreHost(CoreBase):
    """Host-RAM budget of the scheduler core (see `scheduler_base` for the state)."""

    def host_memory(self, available_bytes: int, now: float) -> list[Command]:
        """A host-RAM reading: learn pins, forget confirmed stops, relieve pressure."""
        self.host_available = available_bytes
        self._host_read_at = now
        self._host_fresh = True
        # A stop that has finished is now visible in the reading; one still running is not.
        self._host_freeing = {
            alias
            for alias in self._host_freeing
            if alias in self.slots and self.slots[alias].state is M.STOPPING
        }
        for slot in self.slots.values():
            self._learn_pin(slot, available_bytes)
        return self._flush(now)

    # -- estimates ---------------------------------------------------------------------

    def host_pin_estimate(self, slot: Slot) -> int | None:
        """Bytes `slot` pins while asleep at level 1 or suspended, if known."""
        if slot.config.host_memory_gib is not None:
            return int(slot.config.host_memory_gib * GIB)
        return slot.host_learned_bytes

    def _learn_pin(self, slot: Slot, available: int) -> None:
        before = slot.host_measure_from
        if before is None or slot.state in (M.DRAINING, M.EVICTING):
            return  # the eviction has not finished yet
        slot.host_measure_from = None
        if _pinned(slot):  # not woken or stopped before this reading
            slot.host_learned_bytes = max(0, before - available)

    def _pending_pins(self) -> int:
        """Host RAM that evictions under way, or finished since the last reading, will take."""
        return sum(
            self.host_pin_estimate(slot) or 0
            for slot in self.slots.values()
            if self._pin_pending(slot)
        )

    def _pin_pending(self, slot: Slot) -> bool:
        op = slot.op
        if op is not None:
            return op.kind is OpKind.EVICT and pins_host_memory(op.eviction)
        if not _pinned(slot):
            return False
        read_at = self._host_read_at
        return read_at is None or (slot.pinned_since is not None and slot.pinned_since > read_at)

    def _pinned_sleepers(self, *, exclude: str | None = None) -> list[Slot]:
        """Pinning sleepers that may be stopped, oldest first; those with demand last."""
        found = [
            s
            for s in self.slots.values()
            if _pinned(s) and s.op is None and not s.pinned and s.alias != exclude
        ]
        return sorted(found, key=lambda s: (bool(s.queue), s.pinned_since or 0.0, s.alias))

    # -- the guards ----------------------------------------------------------------------

    def _host_safe_eviction(self, slot: Slot, now: float) -> EvictionConfig | None:
        """The eviction to use for `slot` now, or None to wait for host RAM being freed."""
        eviction = slot.eviction
        if self._host_reserve <= 0 or not pins_host_memory(eviction):
            return eviction
        if self._host_freeing:
            return None
        need = self.host_pin_estimate(slot)
        if need is None or self.host_available is None:
            return eviction  # unknown: the reading guard catches what this cannot foresee
        deficit = self._host_reserve - (self.host_available - self._pending_pins() - need)
        if deficit <= 0:
            return eviction
        chosen: list[Slot] = []
        covered = 0
        for sleeper in self._pinned_sleepers(exclude=slot.alias):
            if sleeper.queue:
                continue  # about to wake, which frees its pin anyway
            estimate = self.host_pin_estimate(sleeper)
            if not estimate:
                continue
            chosen.append(sleeper)
            covered += estimate
            if covered >= deficit:
                for victim in chosen:
                    self._stop_for_host(victim, f"making room for `{slot.alias}`", now)
                return None
        downgraded = without_host_pin(eviction)
        self._out.append(
            Note(
                "host_memory_downgrade",
                {
                    "model": slot.alias,
                    "eviction": str(eviction),
                    "instead": str(downgraded),
                    "available_bytes": self.host_available,
                    "reserve_bytes": self._host_reserve,
                },
            )
        )
        return downgraded

    def _relieve_host_pressure(self, now: float) -> None:
        """A fresh reading below the reserve stops the oldest pinning sleeper."""
        fresh, self._host_fresh = self._host_fresh, False
        if not fresh or self._host_reserve <= 0 or self.host_available is None:
            return
        if self.host_available >= self._host_reserve or self._host_freeing:
            return
        sleepers = self._pinned_sleepers()
        if sleepers:
            self._stop_for_host(sleepers[0], "host memory below the reserve", now)

    def _stop_for_host(self, slot: Slot, why: str, now: float) -> None:
        self._out.append(
            Note(
                "host_memory_pressure",
                {
                    "model": slot.alias,
                    "action": "stop",
                    "why": why,
                    "available_bytes": self.host_available,
                    "reserve_bytes": self._host_reserve,
                },
            )
        )
        slot.last_error = f"stopped to free host memory ({why})"
        self._host_freeing.add(slot.alias)
        self._set_state(slot, M.STOPPING)
        self._start_op(slot, OpKind.STOP, (Step.STOP,), M.STOPPED, None, abort=True, now=now)

    def _host_evicting(self, slot: Slot, eviction: EvictionConfig) -> None:
        """A pinning eviction starts: remember the reading before it, to learn its pin."""
        pins = pins_host_memory(eviction)
        slot.host_measure_from = self.host_available if pins else None

    def _host_evicted(self, slot: Slot, now: float) -> None:
        """An eviction finished: a pinned rest starts its pin; anything else measures nothing."""
        if _pinned(slot):
            slot.pinned_since = now
        else:
            slot.pinned_since = None
            slot.host_measure_from = None


def _pinned(slot: Slot) -> bool:
    """Whether `slot` holds host RAM for its GPU state right now."""
    if slot.state is M.SUSPENDED:
        return True
    return slot.state is M.SLEEPING and slot.evicted_weights is WeightStrategy.OFFLOAD
