"""Idle TTLs: a model nobody has used for a while leaves the GPU by itself, step by step.

Owns: each model's idle ladder (from `ttl_secs`, `idle` or `policy.ttl_secs`) and the
rule that walks it: a ready model with no queued or in-flight request for a step's
`after_secs` drains and evicts with that step's eviction (the deepest step already due);
a sleeping or suspended one whose later step is due has its process stopped. "Used" is
`Slot.last_used_at`, which only grants, releases and wakes move: health checks, metric
scrapes and admin reads never touch a lease, so they never reset the timer. Its timer is
a deadline the core reports (`next_deadline`), so it runs in virtual time in `simulate`.
Does not: choose who is exempt (the core passes pinned, forced, warming or retiring
models), or evict by itself: `Moves` drains and evicts, `Models` stops trees. Pure.
"""

from __future__ import annotations

from collections.abc import Callable

from gpumux.core.config import Config, IdleStep, ProcessStrategy
from gpumux.scheduler.state.models import M, Models
from gpumux.scheduler.state.moves import Moves
from gpumux.scheduler.state.outbox import Outbox
from gpumux.scheduler.state.slots import Slot

#: Resting states a later (stopping) step applies to: a live process holding host RAM.
_RESTING_ALIVE = frozenset({M.SLEEPING, M.SUSPENDED})


class Idle:
    def __init__(self, models: Models, moves: Moves, config: Config) -> None:
        self._models = models
        self._moves = moves
        self._ladders: dict[str, tuple[IdleStep, ...]] = {}
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Take the ladders of `config` (at start and on reload; untouched models keep
        their timers, which live on their slots)."""
        # Only models with a step: `deadlines` walks these after every scheduler input.
        ladders = ((name, config.idle_ladder(name)) for name in config.models)
        self._ladders = {name: ladder for name, ladder in ladders if ladder}

    def ladder(self, alias: str) -> tuple[IdleStep, ...]:
        return self._ladders.get(alias, ())

    def advance(self, now: float, out: Outbox, exempt: Callable[[str], bool]) -> None:
        """Take every idle step that is due."""
        ladders = self._ladders
        for alias, slot in self._models.slots.items():
            # A model without steps never takes one: skipped before the costlier checks.
            if alias not in ladders or not self._eligible(slot, exempt):
                continue
            step = self._due(slot, now)
            if step is None:
                continue
            note = {
                "model": alias,
                "idle_s": round(now - slot.last_used_at, 3),
                "eviction": str(step.eviction),
            }
            out.note("idle_evict", note)
            if slot.state is M.READY:
                self._moves.start_drain(slot, None, now, out, eviction=step.eviction)
            else:
                self._models.stop_tree(slot, now, out)

    def next_step_at(self, alias: str) -> float | None:
        """When `alias`'s next idle step falls due (scheduler clock), or None."""
        slot = self._models.slots.get(alias)
        if slot is None or not slot.idle or slot.op is not None:
            return None
        steps = self._steps_for(slot)
        return slot.last_used_at + steps[0].after_secs if steps else None

    def deadlines(self, exempt: Callable[[str], bool]) -> list[float]:
        """When the eligible models' next steps fall due: the core ticks then. An exempt
        model is left out, so a step it blocks never makes the runner spin; a due step
        of an eligible model was taken by the last `advance`."""
        slots = self._models.slots
        times = (
            self.next_step_at(alias)
            for alias in self._ladders
            if alias in slots and self._eligible(slots[alias], exempt)
        )
        return [t for t in times if t is not None]

    def _eligible(self, slot: Slot, exempt: Callable[[str], bool]) -> bool:
        return slot.idle and slot.op is None and not exempt(slot.alias)

    def _steps_for(self, slot: Slot) -> tuple[IdleStep, ...]:
        """The steps still ahead of `slot` in its state: any from ready, only stops later."""
        ladder = self.ladder(slot.alias)
        if slot.state is M.READY:
            return ladder
        if slot.state in _RESTING_ALIVE:
            return tuple(s for s in ladder[1:] if s.eviction.process is ProcessStrategy.STOP)
        return ()

    def _due(self, slot: Slot, now: float) -> IdleStep | None:
        """The deepest step whose time has come, if any."""
        idle_for = now - slot.last_used_at
        due = [s for s in self._steps_for(slot) if idle_for >= s.after_secs]
        return due[-1] if due else None
