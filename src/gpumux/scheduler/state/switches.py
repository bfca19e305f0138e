"""The switch book: every decision to bring a model up, from its start to its outcome.

Owns: the switches in progress (target, victims, measured phases, cold or not), their
ids, the models evicted ahead of need that the next switch on their GPUs counts as its
victims (so `from` still names who left, while the cost it learns is the wake alone),
the last finished switch per target (status and admin replies read it), and what a
finished switch teaches the cost model (the evict and wake phases of a successful warm
switch only; drain and cooldown are excluded by construction).
Does not: start or judge operations (`Moves` does) or choose targets. Pure.
"""

from __future__ import annotations

from gpumux.policy.costs import SwitchCosts
from gpumux.scheduler.messages import SwitchFinished
from gpumux.scheduler.state.outbox import Outbox
from gpumux.scheduler.state.slots import Slot, Switch

#: Phases that take a model off the GPU; every other measured phase but drain brings one up.
EVICT_PHASES = frozenset({"sleep", "suspend", "dump", "stop"})


class SwitchBook:
    def __init__(self, costs: SwitchCosts) -> None:
        self.active: dict[int, Switch] = {}
        self.last: dict[str, SwitchFinished] = {}  # by target
        self._costs = costs
        self._next = 1
        #: Models evicted ahead of need, and their GPUs: the next switch on those GPUs
        #: names them as its victims (they left for it, only earlier).
        self._ahead: dict[str, tuple[int, ...]] = {}

    def left_ahead(self, alias: str, gpus: tuple[int, ...]) -> None:
        self._ahead[alias] = gpus

    def for_target(self, slot: Slot, now: float, out: Outbox) -> Switch:
        """The switch bringing `slot` up: the one under way, else a new one."""
        if slot.switch_id is None or slot.switch_id not in self.active:
            switch = Switch(self._next, slot.alias, now)
            self._next += 1
            self._ahead.pop(slot.alias, None)  # it comes back itself: it left for nobody
            gpus = set(slot.config.gpu_indices)
            for alias, held in list(self._ahead.items()):
                if alias != slot.alias and gpus.intersection(held):
                    switch.victims.append(alias)
                    del self._ahead[alias]
            self.active[switch.switch_id] = switch
            slot.switch_id = switch.switch_id
            out.note("switch_started", {"switch_id": switch.switch_id, "target": slot.alias})
        return self.active[slot.switch_id]

    def get(self, switch_id: int | None) -> Switch | None:
        return self.active.get(switch_id) if switch_id is not None else None

    def finish(self, switch: Switch, target: Slot, outcome: str, now: float, out: Outbox) -> None:
        self.active.pop(switch.switch_id, None)
        target.switch_id = None
        source = switch.victims[0] if switch.victims else None
        strategy = str(target.eviction)
        if outcome == "ok" and not switch.cold:
            evict = sum(secs for phase, secs in switch.phases if phase in EVICT_PHASES)
            wake = sum(
                secs
                for phase, secs in switch.phases
                if phase not in EVICT_PHASES and phase != "drain"
            )
            self._costs.observe_switch(source, target.alias, strategy, evict + wake)
        finished = SwitchFinished(
            switch.switch_id,
            target.alias,
            tuple(switch.victims),
            strategy,
            outcome,
            now - switch.started_at,
            tuple(switch.phases),
        )
        self.last[target.alias] = finished
        out.add(finished)

    def forget(self, alias: str) -> None:
        """`alias` was removed from the config: no switch waits on it or for it any more."""
        self._ahead.pop(alias, None)
        for switch in list(self.active.values()):
            if alias in switch.victims:
                switch.victims.remove(alias)
            if switch.target == alias:
                del self.active[switch.switch_id]
