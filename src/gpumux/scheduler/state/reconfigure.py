"""A config reload as the scheduler's state sees it, from the new file to the last slot.

Owns: the config the scheduler runs under, and what a reload does to the parts: models
added get a slot, removed ones have their queues answered and start on their way out,
changed ones restart with their new config once stopped, retuned ones keep their process
with the new runtime fields; and what a model's finished retirement leaves behind.
Does not: walk a retiring model toward `stopped` (`Retirements`), or decide when a reload
is refused beyond shutdown (the core's admin dispatch). Pure.
"""

from __future__ import annotations

from gpumux.core.config import GIB, Config, ModelConfig
from gpumux.core.errors import ModelNotFound
from gpumux.scheduler.messages import AdminRefusal
from gpumux.scheduler.state.host_budget import HostBudget
from gpumux.scheduler.state.idle import Idle
from gpumux.scheduler.state.models import Models
from gpumux.scheduler.state.operator import Operator
from gpumux.scheduler.state.outbox import Outbox
from gpumux.scheduler.state.queues import Queues
from gpumux.scheduler.state.retirements import Retirements
from gpumux.scheduler.state.slots import Slot
from gpumux.scheduler.state.supervisor import Supervisor
from gpumux.scheduler.state.switches import SwitchBook
from gpumux.scheduler.state.warmup import Warmup


def add_model(models: Models, alias: str, model: ModelConfig, config: Config) -> None:
    residual = int(config.gpu.sleeping_residual_gib * GIB)
    eviction = config.eviction_for(alias)
    models.add(alias, model, eviction, residual, auto=config.eviction_is_auto(alias))


class Reconfigure:
    def __init__(
        self,
        config: Config,
        models: Models,
        queues: Queues,
        *,
        parts: tuple[Retirements, Idle, Operator, Warmup, SwitchBook, HostBudget, Supervisor],
    ) -> None:
        self.config = config
        self._models = models
        self._queues = queues
        (
            self._retirements,
            self._idle,
            self._operator,
            self._warmup,
            self._switches,
            self._host,
            self._supervisor,
        ) = parts

    def reload(self, config: Config, reply: int, out: Outbox, *, refusal: str | None) -> None:
        """Add new models, drain and stop removed ones, restart changed ones with their new
        config. Untouched models keep slot, queue and process. `refusal`: why not now."""
        if refusal is not None:
            out.reply(reply, refusal, refusal=AdminRefusal.SHUTTING_DOWN)
            return
        slots = self._models.slots
        diff = self._retirements.diff(config)
        for alias in diff.changed + diff.retuned:
            if slots[alias].config.pinned != config.models[alias].pinned:
                self._models.hold(alias, on=config.models[alias].pinned)  # the file's word wins
        self.config = config
        self._idle.configure(config)
        for alias in diff.added:
            add_model(self._models, alias, config.models[alias], config)
        for alias in diff.removed + diff.changed:
            self._retire(slots[alias], config.models.get(alias), out)
        for alias in diff.retuned:
            slots[alias].config = config.models[alias]  # same process, new runtime fields
        out.note("config_reloaded", diff.as_dict())
        out.reply(reply, "config reloaded", data=diff.as_dict())

    def _retire(self, slot: Slot, new: ModelConfig | None, out: Outbox) -> None:
        self._retirements.retire(slot, new)
        if new is not None:
            return  # a changed model keeps its queue: those requests wait for the restart
        gone = f"The model `{slot.alias}` was removed from the config."
        self._queues.reject_all(slot, lambda: ModelNotFound(gone), out)
        self._operator.forget(slot.alias, out)
        self._warmup.drop(slot.alias)

    def retired(self, alias: str, new: ModelConfig | None, out: Outbox) -> None:
        """`alias` finished its way out: drop its slot, or re-create it with `new`."""
        if new is None:
            del self._models.slots[alias]
            self._models.hold(alias, on=False)
            self._switches.forget(alias)
            self._host.forget(alias)
            self._models.demand.forget(alias)
            out.note("model_removed", {"model": alias})
            return
        slot = self._models.slots[alias]
        slot.config = new
        slot.eviction = self.config.eviction_for(alias)
        slot.auto = self.config.eviction_is_auto(alias)
        slot.evicted_weights = None
        slot.evicted_with = None
        self._supervisor.reset(slot, out)
        out.note("model_reconfigured", {"model": alias})
