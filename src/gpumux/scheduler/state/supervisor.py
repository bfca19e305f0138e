"""Supervision: what the core believes about live processes, and how failures back off.

Owns: the failure rules — exponential backoff between starts, `failed` (with 503s) after
`max_start_failures`, a half-open retry after `failed_retry_secs`, a crash soon after
becoming ready counting toward the crash-loop breaker — and the reports about live
processes: a tree's root exited, a backend failed its health checks, a ready backend was
found asleep. A report about a pid the core no longer holds is stale and ignored.
Does not: probe or kill anything (the health monitor and the orchestrator do). Pure.
"""

from __future__ import annotations

from gpumux.core.config import SupervisionConfig, WeightStrategy
from gpumux.core.errors import ModelUnavailable
from gpumux.scheduler.messages import Restarted
from gpumux.scheduler.state.models import M, Models
from gpumux.scheduler.state.outbox import Outbox
from gpumux.scheduler.state.queues import Queues
from gpumux.scheduler.state.slots import Slot

#: Live states a crash or a failed health check takes a model out of.
_SERVING_OR_ASLEEP = (M.READY, M.DRAINING, M.SLEEPING, M.SUSPENDED)
_PROBED = (M.READY, M.SLEEPING, M.SUSPENDED)


class Supervisor:
    def __init__(self, models: Models, queues: Queues, supervision: SupervisionConfig) -> None:
        self._models = models
        self._queues = queues
        self._sup = supervision

    # ---- failures and backoff ----------------------------------------------------------

    def count_failure(self, slot: Slot, now: float, out: Outbox) -> None:
        slot.start_failures += 1
        self.judge(slot, now, out)

    def judge(self, slot: Slot, now: float, out: Outbox) -> None:
        """Back off exponentially; after max_start_failures the model is failed (503s)."""
        if slot.start_failures >= self._sup.max_start_failures:
            slot.retry_not_before = now + self._sup.failed_retry_secs
            self._models.set_state(slot, M.FAILED, out)
            self._queues.reject_all(slot, lambda: self.unavailable(slot, now), out)
            return
        slot.retry_not_before = now + self.backoff(slot)

    def backoff(self, slot: Slot) -> float:
        exponent = max(0, slot.start_failures - 1)
        backoff: float = self._sup.restart_backoff_secs * 2.0**exponent
        return min(backoff, self._sup.restart_backoff_max_secs)

    def retry_failed(self, slot: Slot, now: float, out: Outbox) -> bool:
        """A request for a failed model: after the cool-down, allow one more start."""
        if slot.retry_not_before is None or now < slot.retry_not_before:
            return False
        self._models.set_state(slot, M.STOPPED, out)
        slot.start_failures = self._sup.max_start_failures - 1  # half-open: one try
        return True

    def unavailable(self, slot: Slot, now: float) -> ModelUnavailable:
        retry = max(1.0, (slot.retry_not_before or now) - now)
        detail = f": {slot.last_error}" if slot.last_error else ""
        return ModelUnavailable(
            f"The model `{slot.alias}` is unavailable{detail}", retry_after=retry
        )

    def reset(self, slot: Slot, out: Outbox) -> None:
        """Forget failures: a failed model becomes stopped and may start again."""
        if slot.state is M.FAILED:
            self._models.set_state(slot, M.STOPPED, out)
        slot.start_failures = 0
        slot.retry_not_before = None
        slot.last_error = ""

    # ---- reports about live processes ------------------------------------------------------

    def exited(self, model: str, pid: int, code: int, now: float, out: Outbox) -> None:
        """A supervised tree's root exited. Expected exits (during an op) are the op's."""
        slot = self._models.slots.get(model)
        if slot is None or slot.pid != pid:
            return
        slot.pid = None
        if slot.op is not None:
            return  # the running operation sees the failure itself
        out.note("backend_crashed", {"model": model, "pid": pid, "code": code})
        if slot.state not in _SERVING_OR_ASLEEP:
            return
        was_ready_for = now - slot.ready_since if slot.ready_since is not None else 0.0
        slot.ready_since = None
        slot.drain_deadline = None
        slot.last_error = f"process exited with code {code}"
        slot.restarts += 1
        out.add(Restarted(model, "crash"))
        # A crash soon after becoming ready counts toward the crash-loop breaker (judged
        # when the stop below completes).
        if was_ready_for < self._sup.restart_backoff_max_secs:
            slot.start_failures += 1
        else:
            slot.start_failures = 0
        slot.retry_not_before = now + self.backoff(slot) if slot.start_failures else now
        # The root is gone, but its EngineCore and workers may not be (they would keep GPU
        # memory and the image's PIDs): stop the whole tree before anything else.
        self._models.stop_tree(slot, now, out)

    def unhealthy(self, model: str, pid: int, now: float, out: Outbox) -> None:
        """A live backend failed its health probes repeatedly: kill it (restarts on demand)."""
        slot = self._models.slots.get(model)
        if slot is None or slot.pid != pid or slot.op is not None or slot.state not in _PROBED:
            return  # stale report: the owner's view wins
        slot.last_error = "failed its health checks"
        slot.restarts += 1
        out.add(Restarted(model, "unhealthy"))
        self._models.stop_tree(slot, now, out)
        slot.start_failures += 1  # judged when the stop completes (STOPPING cannot fail)
        slot.retry_not_before = now + self.backoff(slot)

    def asleep(self, model: str, pid: int, out: Outbox) -> None:
        """A ready backend reports it is asleep (someone called its /sleep): believe it.

        The level is unknown, so it wakes with the level-2 sequence, which is correct after
        either level (reload_weights after level 1 only re-reads the weights).
        """
        slot = self._models.slots.get(model)
        if slot is None or slot.pid != pid or slot.op is not None or slot.state is not M.READY:
            return
        out.note("backend_found_asleep", {"model": model, "pid": pid})
        slot.ready_since = None
        slot.evicted_weights = WeightStrategy.DISCARD
        self._models.set_state(slot, M.SLEEPING, out)
