"""Turns the scheduler's observations into metrics and structured log events.

Owns: the mapping from scheduler commands (state changes, switches, restarts, queue
waits) to `gpumux_*` metrics and log lines, and a bounded history of recent events
for the status API.
Does not: change any state.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import structlog

from gpumux.scheduler.messages import Note, QueueWait, Restarted, StateChanged, SwitchFinished
from gpumux.telemetry.metrics import Metrics

log = structlog.get_logger("gpumux.scheduler.runner")

#: Events kept for the status API / dashboard.
HISTORY = 200


class DaemonObserver:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.events: deque[dict[str, object]] = deque(maxlen=HISTORY)
        self.last_switch: dict[str, dict[str, object]] = {}
        self._depths: dict[str, int] = {}
        self._inflight: dict[str, int] = {}
        #: Called with each remembered event (the admin API's SSE hub subscribes here).
        self.listeners: list[Callable[[dict[str, object]], None]] = []

    def _remember(self, event: str, **fields: object) -> None:
        record: dict[str, object] = {"t": time.time(), "event": event, **fields}
        self.events.append(record)
        for listener in self.listeners:
            listener(record)

    def state_changed(self, event: StateChanged) -> None:
        self._metrics.set_model_state(event.model, event.after)
        log.info(
            "state_changed", model=event.model, before=event.before.value, after=event.after.value
        )
        self._remember(
            "state_changed", model=event.model, before=event.before.value, after=event.after.value
        )

    def switch_finished(self, event: SwitchFinished) -> None:
        m = self._metrics
        m.switch_duration.labels(event.strategy, event.outcome).observe(event.duration_secs)
        source = event.victims[0] if event.victims else "-"
        m.switches.labels(source, event.target, event.outcome).inc()
        for phase, secs in event.phase_secs:
            m.switch_phase.labels(phase).observe(secs)
        fields: dict[str, object] = {
            "switch_id": event.switch_id,
            "target": event.target,
            "victims": list(event.victims),
            "strategy": event.strategy,
            "outcome": event.outcome,
            "duration_s": round(event.duration_secs, 4),
            "phases": {phase: round(secs, 4) for phase, secs in event.phase_totals().items()},
        }
        self.last_switch[event.target] = {**fields, "at": time.time()}
        log.info("switch_finished", **fields)
        self._remember("switch_finished", **fields)

    def restarted(self, event: Restarted) -> None:
        self._metrics.backend_restarts.labels(event.model, event.reason).inc()
        log.warning("backend_restarted", model=event.model, reason=event.reason)
        self._remember("backend_restarted", model=event.model, reason=event.reason)

    def restore_failed(self, model: str, reason: str) -> None:
        """A CRIU restore did not happen or did not work (`checkpoints` logged why)."""
        self._metrics.checkpoint_restore_failures.labels(model, reason).inc()
        self._remember("checkpoint_restore_failed", model=model, reason=reason)

    def queue_wait(self, event: QueueWait) -> None:
        self._metrics.observe_queue_wait(event.model, event.wait_secs)

    def note(self, event: Note) -> None:
        log.info(event.event, **event.fields)
        self._remember(event.event, **event.fields)

    def queues_changed(self, depths: dict[str, int], inflight: dict[str, int]) -> None:
        # Called after every scheduler wake-up: touch only the models whose load moved.
        known_depths, known_inflight = self._depths, self._inflight
        for model, depth in depths.items():
            count = inflight.get(model, 0)
            if known_depths.get(model) != depth or known_inflight.get(model) != count:
                known_depths[model], known_inflight[model] = depth, count
                self._metrics.set_queue_load(model, depth, count)
