"""The preload pass (`preload: [...]`): bring models up at start, in order, while they fit.

Owns: the models still to preload and what became of each (`pending`, `started`, or
`skipped: why`), reported in `/api/status`. One at a time, only while nothing else moves,
after the warm-up pass; a model that does not fit without evicting another is skipped
("as far as memory allows"), as is one that failed or is already up.
Does not: evict anything, judge the wake (`Moves`), or keep a preloaded model up: it is
an ordinary ready model from then on (a pin keeps it; an idle TTL may evict it). Pure.
"""

from __future__ import annotations

from collections.abc import Iterable

from gpumux.scheduler.state.models import STARTABLE, M, Models
from gpumux.scheduler.state.moves import Moves
from gpumux.scheduler.state.outbox import Outbox

PENDING = "pending"
STARTED = "started"


class Preload:
    def __init__(self, models: Models, moves: Moves, aliases: Iterable[str]) -> None:
        self._models = models
        self._moves = moves
        self._pending = list(aliases)
        self.outcomes: dict[str, str] = dict.fromkeys(self._pending, PENDING)

    @property
    def active(self) -> bool:
        return bool(self._pending)

    def advance(self, now: float, out: Outbox) -> None:
        """Start the next preload when nothing moves; skip what cannot come up."""
        while self._pending and not self._models.busy:
            alias = self._pending.pop(0)
            slot = self._models.slots.get(alias)
            if slot is None or slot.state is M.FAILED:
                self._skip(alias, "failed or gone", out)
            elif slot.state not in STARTABLE:
                self._skip(alias, f"already {slot.state.value}", out)
            elif not self._models.admit(alias, now).fits_now:
                self._skip(alias, "does not fit without evicting another model", out)
            else:
                self.outcomes[alias] = STARTED
                self._moves.start_wake(slot, None, now, out)

    def _skip(self, alias: str, why: str, out: Outbox) -> None:
        self.outcomes[alias] = f"skipped: {why}"
        out.note("preload_skipped", {"model": alias, "why": why})
