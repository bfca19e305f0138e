"""Config reload: which models a new table adds, removes or changes, and their way out.

Owns: the diff between the models in force and a new table, and the models on their way
out (alias → new config; None = removed): each one's next eviction becomes a plain stop,
it drains if ready, its tree is stopped, a removed one waits for its last release, and
only then is it done (the core then drops or re-creates its slot).
Does not: touch queues, forced switches or other parts' bookkeeping of a removed model
(the core tells each part); untouched models keep slot, queue and process. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpumux.core.config import Config, EvictionConfig, ModelConfig, ProcessStrategy, WeightStrategy
from gpumux.scheduler.state.models import M, Models
from gpumux.scheduler.state.moves import Moves
from gpumux.scheduler.state.outbox import Outbox
from gpumux.scheduler.state.slots import Slot

#: How a retiring model leaves, whatever its strategy: the process must go.
PLAIN_STOP = EvictionConfig(weights=WeightStrategy.RETAIN, process=ProcessStrategy.STOP)


@dataclass(frozen=True)
class ModelDiff:
    added: list[str]
    removed: list[str]
    changed: list[str]
    #: Changed only in fields applied in place (`RUNTIME_ONLY_FIELDS`): no restart.
    retuned: list[str]

    def as_dict(self) -> dict[str, object]:
        return {
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "retuned": self.retuned,
        }


class Retirements:
    def __init__(self, models: Models, moves: Moves) -> None:
        self._models = models
        self._moves = moves
        self._retiring: dict[str, ModelConfig | None] = {}

    def diff(self, config: Config) -> ModelDiff:
        """What `config` changes against the models in force.

        A model still on its way out is neither new (its slot is still there: a reload
        that brings it back finds it removed, so it stays so) nor removed again.
        """
        slots = self._models.slots
        current = {a: s for a, s in slots.items() if not self.removing(a)}
        models = config.models
        kept = [a for a in models if a in current]
        changed = [
            a
            for a in kept
            if current[a].config.process_key() != models[a].process_key()
            or current[a].eviction != config.eviction_for(a)
        ]
        return ModelDiff(
            added=[a for a in models if a not in slots],
            removed=[a for a in current if a not in models],
            changed=changed,
            retuned=[a for a in kept if a not in changed and current[a].config != models[a]],
        )

    def removing(self, alias: str) -> bool:
        return alias in self._retiring and self._retiring[alias] is None

    def retiring(self, alias: str) -> bool:
        return alias in self._retiring

    def retire(self, slot: Slot, new: ModelConfig | None) -> None:
        """`slot` goes: for good (`new` None), or to come back with `new`."""
        self._retiring[slot.alias] = new
        slot.eviction = PLAIN_STOP  # its next eviction is a plain stop

    def pending(self) -> list[tuple[str, ModelConfig | None]]:
        """The models on their way out (a copy: `advance` removes the finished ones)."""
        return list(self._retiring.items()) if self._retiring else []

    def advance(self, alias: str, now: float, out: Outbox) -> bool:
        """Walk retiring `alias` one step toward `stopped`; True once it is done."""
        slot = self._models.slots[alias]
        new = self._retiring[alias]
        if slot.op is not None or slot.state is M.DRAINING:
            return False  # the running operation or drain finishes first
        if slot.state is M.READY:
            self._moves.start_drain(slot, None, now, out)
            return False
        if slot.process_alive:
            self._models.stop_tree(slot, now, out)
            return False
        if new is None and (slot.leases or slot.queue):
            return False  # wait for the last release (the stop ended its streams)
        del self._retiring[alias]
        if slot.state in (M.FAILED, M.CHECKPOINTED):
            self._models.set_state(slot, M.STOPPED, out)  # a new config deserves a fresh start
        return True
