"""The warm-up pass (`warmup: true`): each model is brought up once and evicted again.

Owns: the models still to warm, in config order, and which one is warming now. One at a
time, only while nothing else moves; a model that failed is skipped. While it runs, the
policy is not asked (the core checks `active`).
Does not: judge the wake (`Moves` does; the core tells this part when it finished). Pure.
"""

from __future__ import annotations

from collections.abc import Iterable

from gpumux.scheduler.state.models import STARTABLE, M, Models
from gpumux.scheduler.state.moves import Moves
from gpumux.scheduler.state.outbox import Outbox


class Warmup:
    def __init__(self, models: Models, moves: Moves, aliases: Iterable[str]) -> None:
        self._models = models
        self._moves = moves
        self._pending = list(aliases)
        self._current: str | None = None  # brought up by the pass, to be evicted again

    @property
    def active(self) -> bool:
        return bool(self._pending)

    def warming(self, alias: str) -> bool:
        return self._current == alias

    def advance(self, now: float, out: Outbox) -> None:
        if self._models.busy:
            return
        slot = self._models.slots[self._pending[0]]
        if slot.state in STARTABLE:
            self._current = slot.alias
            self._moves.start_wake(slot, None, now, out, warmup=True)
        elif slot.state is M.FAILED:
            self._pending.pop(0)

    def finished(self, alias: str) -> None:
        """The warming wake of `alias` ended (either way): on to the next model."""
        self._current = None
        self._pending.remove(alias)

    def drop(self, alias: str) -> None:
        """`alias` left the config; one warming now finishes its pass first."""
        if alias in self._pending and not self.warming(alias):
            self._pending.remove(alias)
