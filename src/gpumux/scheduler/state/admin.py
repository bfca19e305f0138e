"""The scheduler core's operator inputs: forced switches, evict/restart/reset, modes, reload.

Owns: the forced-switch queue (served one at a time, so concurrent switches serialise),
manual mode (a pinned model is never evicted and is the only one woken), and the config
reload that adds, retires and reconfigures models. Each admin input answers with exactly
one `AdminReply`.
Does not: speak HTTP (the admin API does) or wait (the runner does). Pure.
"""

from __future__ import annotations

from gpumux.core.config import Config, EvictionConfig, ModelConfig, ProcessStrategy, WeightStrategy
from gpumux.core.errors import ModelNotFound
from gpumux.core.eviction import Step
from gpumux.core.states import (
    RequestState,
)
from gpumux.scheduler.messages import (
    Command,
    Note,
    OpKind,
    Reject,
)
from gpumux.scheduler.state.base import STARTABLE, M
from gpumux.scheduler.state.moves import CoreMoves
from gpumux.scheduler.state.slots import Slot


class CoreAdmin(CoreMoves):
    """Operator inputs of the scheduler core."""

    def admin_switch(self, model: str, reply: int, now: float) -> list[Command]:
        """Make `model` ready now: drain and evict whoever must leave, ignoring min_active."""
        if self._admin_refused(model, reply):
            return self._flush(now)
        self._forced.append((model, reply))
        return self._flush(now)

    def admin_evict(self, model: str, reply: int, now: float) -> list[Command]:
        if self._admin_refused(model, reply):
            return self._flush(now)
        slot = self.slots[model]
        if slot.state is not M.READY:
            self._reply(reply, False, f"`{model}` is {slot.state.value}, not ready", 409)
        else:
            self._start_drain(slot, None, now)
            self._reply(reply, True, f"`{model}` is draining, then {slot.eviction}")
        return self._flush(now)

    def admin_restart(self, model: str, reply: int, now: float) -> list[Command]:
        if self._admin_refused(model, reply):
            return self._flush(now)
        slot = self.slots[model]
        if slot.op is not None or slot.state is M.DRAINING:
            self._reply(reply, False, f"`{model}` is busy ({slot.state.value})", 409)
        elif slot.process_alive:
            self._restart_after_stop[model] = reply
            self._set_state(slot, M.STOPPING)
            self._start_op(slot, OpKind.STOP, (Step.STOP,), M.STOPPED, None, abort=True, now=now)
        else:
            if slot.state is M.FAILED:
                self._reset(slot)
            self._forced.append((model, reply))
        return self._flush(now)

    def admin_reset(self, model: str, reply: int, now: float) -> list[Command]:
        if model not in self.slots:
            self._reply(reply, False, f"unknown model `{model}`", 404)
            return self._flush(now)
        slot = self.slots[model]
        was = slot.state
        self._reset(slot)
        self._reply(reply, True, f"`{model}` reset (was {was.value})")
        return self._flush(now)

    def admin_mode(self, mode: str, model: str | None, reply: int, now: float) -> list[Command]:
        """`manual` pins one model (never evicted, the only one woken); `auto` releases it."""
        if mode == "auto":
            self._pin(None)
            self._reply(reply, True, "automatic switching")
        elif mode == "manual":
            target = model or next(
                (s.alias for s in self.slots.values() if s.state is M.READY), None
            )
            if target is None or target not in self.slots:
                self._reply(reply, False, "manual mode needs a model (none is ready)", 400)
            else:
                self._pin(target)
                self._forced.append((target, reply))
        else:
            self._reply(reply, False, f"unknown mode {mode!r}", 400)
        return self._flush(now)

    def _admin_refused(self, model: str, reply: int) -> bool:
        if model not in self.slots or self._removing(model):
            self._reply(reply, False, f"unknown model `{model}`", 404)
        elif self.shutting_down:
            self._reply(reply, False, "gpumux is shutting down", 503)
        else:
            return False
        return True

    def _advance_forced(self, now: float) -> None:
        """Serve the head of the forced queue: done when ready, failed when it cannot start."""
        while self._forced:
            model, reply = self._forced[0]
            slot = self.slots[model]
            if slot.state is M.READY:
                self._forced.popleft()
                last = self.last_switch.get(model)
                details: dict[str, object] = {"model": model}
                if last is not None:
                    details |= {
                        "switch_id": last.switch_id,
                        "victims": list(last.victims),
                        "outcome": last.outcome,
                        "duration_s": last.duration_secs,
                        "phases": last.phase_totals(),
                    }
                self._reply(reply, True, f"`{model}` is ready", data=details)
                continue
            if slot.state is M.FAILED:
                self._forced.popleft()
                self._reply(reply, False, f"`{model}` failed: {slot.last_error}", 503)
                continue
            if slot.state in STARTABLE and slot.op is None:
                self._try_bring_up(slot, now, force=True)
            return

    def reload(self, config: Config, reply: int, now: float) -> list[Command]:
        """Apply a new model table: add new models, drain and stop removed ones, restart
        changed ones with their new config. Untouched models keep slot, queue and process.
        """
        if self.shutting_down:
            self._reply(reply, False, "gpumux is shutting down", 503)
            return self._flush(now)
        old = {a: s for a, s in self.slots.items() if not self._removing(a)}
        added = [a for a in config.models if a not in self.slots]
        removed = [a for a in old if a not in config.models]
        changed = [
            a
            for a in config.models
            if a in old
            and (old[a].config != config.models[a] or old[a].eviction != config.eviction_for(a))
        ]
        self._config = config
        residual = int(config.gpu.sleeping_residual_gib * 1024**3)
        for alias in added:
            self.slots[alias] = Slot(
                alias, config.models[alias], config.eviction_for(alias), residual_bytes=residual
            )
        for alias in removed + changed:
            self._retire(self.slots[alias], config.models.get(alias))
        self._out.append(
            Note("config_reloaded", {"added": added, "removed": removed, "changed": changed})
        )
        self._reply(
            reply,
            True,
            "config reloaded",
            data={"added": added, "removed": removed, "changed": changed},
        )
        return self._flush(now)

    def _removing(self, alias: str) -> bool:
        return alias in self._retiring and self._retiring[alias] is None

    def _retire(self, slot: Slot, new: ModelConfig | None) -> None:
        self._retiring[slot.alias] = new
        # Its next eviction is a plain stop: the process must go, whatever the strategy.
        slot.eviction = EvictionConfig(weights=WeightStrategy.RETAIN, process=ProcessStrategy.STOP)
        if new is not None:
            return  # a changed model keeps its queue: those requests wait for the restart
        gone = ModelNotFound(f"The model `{slot.alias}` was removed from the config.")
        while slot.queue:
            entry = slot.queue[0]
            self._ticket_state(entry, RequestState.REJECTED)
            self._drop_ticket(entry)
            self._out.append(Reject(entry.ticket, gone))
        for model, reply in [f for f in self._forced if f[0] == slot.alias]:
            self._forced.remove((model, reply))
            self._reply(reply, False, f"`{model}` was removed from the config", 404)
        if self.pinned == slot.alias:
            self._pin(None)
        if slot.alias in self._warmup and not slot.warming:
            self._warmup.remove(slot.alias)

    def _advance_retiring(self, now: float) -> None:
        """Walk each retiring model to `stopped`, then drop or re-create its slot."""
        for alias, new in list(self._retiring.items()):
            slot = self.slots[alias]
            if slot.op is not None or slot.state is M.DRAINING:
                continue  # the running operation or drain finishes first
            if slot.state is M.READY:
                self._start_drain(slot, None, now)
                continue
            if slot.process_alive:
                self._set_state(slot, M.STOPPING)
                self._start_op(
                    slot, OpKind.STOP, (Step.STOP,), M.STOPPED, None, abort=True, now=now
                )
                continue
            if new is None and (slot.leases or slot.queue):
                continue  # wait for the last release (the stop ended its streams)
            del self._retiring[alias]
            if slot.state in (M.FAILED, M.CHECKPOINTED):
                self._set_state(slot, M.STOPPED)  # a new config (or none) deserves a fresh start
            if new is None:
                del self.slots[alias]
                for switch in list(self.switches.values()):
                    if alias in switch.victims:
                        switch.victims.remove(alias)
                    if switch.target == alias:
                        del self.switches[switch.switch_id]
                self._out.append(Note("model_removed", {"model": alias}))
            else:
                slot.config = new
                slot.eviction = self._config.eviction_for(alias)
                slot.evicted_weights = None
                self._reset(slot)
                self._out.append(Note("model_reconfigured", {"model": alias}))
