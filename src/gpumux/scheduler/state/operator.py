"""The operator's commands: forced switches, evict, restart, reset, and manual mode.

Owns: the forced-switch queue (served one at a time, in order, so concurrent switches
serialise; its head goes before the policy), restarts waiting for their stop, and manual
mode (a pinned model is never evicted and is the only one woken). Each command is
answered with exactly one `AdminReply`, a refusal carrying an `AdminRefusal`.
Does not: speak HTTP (`admin/` maps refusals to status codes), wait (the runner does), or
check whether a model exists (the core refuses unknown models before calling). Pure.
"""

from __future__ import annotations

from collections import deque

from gpumux.core.config_rules import pin_overcommit
from gpumux.scheduler.inputs import AdminMode
from gpumux.scheduler.messages import AdminRefusal, Mode
from gpumux.scheduler.state.models import STARTABLE, M, Models
from gpumux.scheduler.state.moves import Moves
from gpumux.scheduler.state.outbox import Outbox
from gpumux.scheduler.state.slots import Slot
from gpumux.scheduler.state.supervisor import Supervisor
from gpumux.scheduler.state.switches import SwitchBook


class Operator:
    def __init__(
        self, models: Models, moves: Moves, supervisor: Supervisor, switches: SwitchBook
    ) -> None:
        self._models = models
        self._moves = moves
        self._supervisor = supervisor
        self._switches = switches
        self._forced: deque[tuple[str, int]] = deque()  # (model, reply)
        self._restart_after_stop: dict[str, int] = {}  # model -> reply

    @property
    def busy(self) -> bool:
        """A forced switch is waiting or under way (the policy waits for it)."""
        return bool(self._forced)

    def forcing(self, alias: str) -> bool:
        """An operator's switch to `alias` is waiting or under way."""
        return any(model == alias for model, _ in self._forced)

    # ---- commands ------------------------------------------------------------------------

    def switch(self, model: str, reply: int) -> None:
        self._forced.append((model, reply))

    def evict(self, slot: Slot, reply: int, now: float, out: Outbox, *, force: bool) -> None:
        if slot.alias in self._models.held and not force:
            detail = f"`{slot.alias}` is pinned; evict it with force, or unpin it first"
            out.reply(reply, detail, refusal=AdminRefusal.BUSY)
            return
        if slot.state is not M.READY:
            detail = f"`{slot.alias}` is {slot.state.value}, not ready"
            out.reply(reply, detail, refusal=AdminRefusal.BUSY)
            return
        self._moves.start_drain(slot, None, now, out)
        out.reply(reply, f"`{slot.alias}` is draining, then {slot.eviction}")

    def pin(self, slot: Slot, pinned: bool, reply: int, out: Outbox) -> None:
        """Hold `slot` against eviction, if the held set still fits awake together."""
        if pinned:
            held = sorted(self._models.held | {slot.alias})
            configs = {a: self._models.slots[a].config for a in held}
            problems = list(pin_overcommit(configs, held))
            if problems:
                out.reply(reply, problems[0], refusal=AdminRefusal.BAD_REQUEST)
                return
        self._models.hold(slot.alias, on=pinned)
        out.note("model_pinned" if pinned else "model_unpinned", {"model": slot.alias})
        out.reply(reply, f"`{slot.alias}` is {'pinned' if pinned else 'unpinned'}")

    def restart(self, slot: Slot, reply: int, now: float, out: Outbox) -> None:
        if slot.op is not None or slot.state is M.DRAINING:
            detail = f"`{slot.alias}` is busy ({slot.state.value})"
            out.reply(reply, detail, refusal=AdminRefusal.BUSY)
        elif slot.process_alive:
            self._restart_after_stop[slot.alias] = reply
            self._models.stop_tree(slot, now, out)
        else:
            if slot.state is M.FAILED:
                self._supervisor.reset(slot, out)
            self._forced.append((slot.alias, reply))

    def reset(self, slot: Slot, reply: int, out: Outbox) -> None:
        was = slot.state
        self._supervisor.reset(slot, out)
        out.reply(reply, f"`{slot.alias}` reset (was {was.value})")

    def mode(self, command: AdminMode, reply: int, out: Outbox) -> None:
        if command.mode is Mode.AUTO:
            self._models.pin(None)
            out.reply(reply, "automatic switching")
            return
        slots = self._models.slots
        target = command.model or next(
            (s.alias for s in slots.values() if s.state is M.READY), None
        )
        if target is None:
            detail = "manual mode needs a model (none is ready)"
            out.reply(reply, detail, refusal=AdminRefusal.BAD_REQUEST)
            return
        self._models.pin(target)
        self._forced.append((target, reply))

    # ---- progress ------------------------------------------------------------------------

    def advance(self, now: float, out: Outbox) -> float | None:
        """Serve the head of the forced queue: done when ready, failed when it cannot start.

        Returns when placement asked to be re-asked, if it did.
        """
        while self._forced:
            model, reply = self._forced[0]
            slot = self._models.slots[model]
            if slot.state is M.READY:
                self._forced.popleft()
                out.reply(reply, f"`{model}` is ready", data=self._ready_details(model))
                continue
            if slot.state is M.FAILED:
                self._forced.popleft()
                detail = f"`{model}` failed: {slot.last_error}"
                out.reply(reply, detail, refusal=AdminRefusal.START_FAILED)
                continue
            if slot.state in STARTABLE and slot.op is None:
                return self._moves.bring_up(slot, now, out, force=True).wait_until
            return None
        return None

    def _ready_details(self, model: str) -> dict[str, object]:
        details: dict[str, object] = {"model": model}
        last = self._switches.last.get(model)
        if last is not None:
            details |= {
                "switch_id": last.switch_id,
                "victims": list(last.victims),
                "outcome": last.outcome,
                "duration_s": last.duration_secs,
                "phases": last.phase_totals(),
            }
        return details

    def start_failed(self, slot: Slot, error: str, out: Outbox) -> None:
        """A wake of `slot` failed; a forced switch waiting on it hears so now."""
        if self._forced and self._forced[0][0] == slot.alias and slot.state is not M.FAILED:
            _, reply = self._forced.popleft()
            detail = f"`{slot.alias}` did not start: {error}"
            out.reply(reply, detail, refusal=AdminRefusal.START_FAILED)

    def take_restart(self, alias: str) -> int | None:
        """The reply of a restart that waited for `alias`'s stop, if one did."""
        return self._restart_after_stop.pop(alias, None)

    def refuse_all(self, detail: str, refusal: AdminRefusal, out: Outbox) -> None:
        while self._forced:
            _, reply = self._forced.popleft()
            out.reply(reply, detail, refusal=refusal)

    def forget(self, alias: str, out: Outbox) -> None:
        """`alias` was removed from the config: its forced switches and a restart waiting
        for its stop fail now (the restart would otherwise come back as a forced switch
        for a model whose slot is gone), and its pin goes."""
        detail = f"`{alias}` was removed from the config"
        for model, reply in [f for f in self._forced if f[0] == alias]:
            self._forced.remove((model, reply))
            out.reply(reply, detail, refusal=AdminRefusal.UNKNOWN_MODEL)
        restart = self._restart_after_stop.pop(alias, None)
        if restart is not None:
            out.reply(restart, detail, refusal=AdminRefusal.UNKNOWN_MODEL)
        if self._models.pinned == alias:
            self._models.pin(None)
