"""What a simulation run leaves behind: one record per request and per switch, busy time.

Owns: `RequestRecord`, `SwitchRecord` and `RunRecord`, filled in by the engine and read by
the report and the plot, and `SwitchLog`, which times switches the way the wait bound
counts them.
Does not: compute statistics (`report`) or draw (`plot`). Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpumux.core.config import Config
from gpumux.core.states import ModelState
from gpumux.scheduler.messages import Command, StateChanged, SwitchFinished

_WAKING = (ModelState.WAKING, ModelState.STARTING)


@dataclass
class RequestRecord:
    ticket: int
    model: str
    arrived_at: float
    work: float
    outcome: str = ""  # granted | rejected | cancelled ("" while open)
    decided_at: float | None = None  # grant or rejection
    finished_at: float | None = None
    completed: bool = False  # served to the last token
    switch_secs: float = 0.0  # the switch that brought its model up for it, if any

    @property
    def wait(self) -> float | None:
        """Queue wait: grant (or rejection) time minus arrival."""
        return None if self.decided_at is None else self.decided_at - self.arrived_at


@dataclass(frozen=True)
class SwitchRecord:
    finished_at: float
    target: str
    victims: tuple[str, ...]
    outcome: str
    secs: float  # drain + evict + wake, from the first victim's drain (or the wake) to ready


@dataclass
class RunRecord:
    policy: str
    max_wait_secs: float
    requests: dict[int, RequestRecord] = field(default_factory=dict)
    switches: list[SwitchRecord] = field(default_factory=list)
    gpus: dict[str, tuple[int, ...]] = field(default_factory=dict)  # model -> its GPUs
    busy: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # serving spans
    end: float = 0.0

    @classmethod
    def for_config(cls, config: Config) -> RunRecord:
        return cls(
            config.policy.policy_type,
            config.policy.max_wait_secs,
            gpus={alias: m.gpu_indices for alias, m in config.models.items()},
            busy={alias: [] for alias in config.models},
        )


class SwitchLog:
    """Times each switch from its first victim's drain (or its wake) until ready.

    The core's own `SwitchFinished.duration_secs` starts when the switch was first asked
    for, which includes waiting out `min_active_secs`; the wait bound allows one switch,
    not that wait, so the simulator times the work itself: drain, evict, wake.
    """

    def __init__(self, record: RunRecord) -> None:
        self._record = record
        self._drain_start: dict[str, float] = {}
        self._wake_start: dict[str, float] = {}
        self._last: dict[str, SwitchRecord] = {}

    def observe(self, command: Command, now: float) -> None:
        """Follow the core's state changes and finished switches."""
        if isinstance(command, StateChanged):
            if command.after is ModelState.DRAINING:
                self._drain_start[command.model] = now
            elif command.after in _WAKING and command.before not in _WAKING:
                self._wake_start[command.model] = now  # a fallback to cold keeps the start
        elif isinstance(command, SwitchFinished):
            starts = [self._drain_start.get(v, now) for v in command.victims]
            began = min([*starts, self._wake_start.get(command.target, now)])
            switch = SwitchRecord(
                now, command.target, command.victims, command.outcome, now - began
            )
            self._record.switches.append(switch)
            if switch.outcome in ("ok", "fallback_cold"):
                self._last[switch.target] = switch

    def allowance(self, model: str, arrived_at: float) -> float:
        """The switch that brought `model` up for a request that arrived then (0: none)."""
        switch = self._last.get(model)
        return switch.secs if switch is not None and switch.finished_at >= arrived_at else 0.0
