"""Pieces of the switching properties (tests/sim/test_switching_properties.py).

Owns: `HostWatch` (an observer that keeps its own account of the host RAM every backend
pins, from the commands alone, feeds the core a reading whenever it changes, and asserts
the pins never exceed the host), `PinWatch` (asserts a pinned model never starts to leave)
and `AheadWatch` (records each eviction ahead of need and each later wake of that model),
the configs they run on and the stationary-load strategy.
Does not: assert the properties' conclusions (the tests do).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from gpumux.core.config import Config, EvictionConfig, ProcessStrategy, WeightStrategy
from gpumux.core.eviction import pins_host_memory
from gpumux.core.states import ModelState
from gpumux.scheduler.inputs import HostMemory, Input
from gpumux.scheduler.messages import Command, Note, OpKind, StartOp, StateChanged
from gpumux.scheduler.state.core import SchedulerCore
from gpumux.simulate.engine import Simulation
from gpumux.simulate.workloads import Arrival

GIB = 1024**3
M = ModelState
_GONE = frozenset({M.STOPPED, M.CHECKPOINTED, M.FAILED})
_UP = frozenset({M.WAKING, M.STARTING})


def switching_config(
    policy: str,
    utils: list[float],
    evictions: list[str],
    *,
    gpus: int = 1,
    pinned: frozenset[int] = frozenset(),
    host: dict[str, Any] | None = None,
    extra_policy: dict[str, Any] | None = None,
) -> Config:
    """n models over `gpus` fake GPUs; an eviction may be "auto"; `pinned` model indices."""
    models: dict[str, Any] = {}
    for i, (util, eviction) in enumerate(zip(utils, evictions, strict=True)):
        weights, _, process = eviction.partition("+")
        models[f"m{i}"] = {
            "model_path": f"test/m{i}",
            "port": 8100 + i,
            "gpus": [i % gpus],
            "extra_args": ["--gpu-memory-utilization", str(util)],
            "eviction": "auto" if eviction == "auto" else {"weights": weights, "process": process},
            "max_queue": 64,
            "pinned": i in pinned,
            "host_memory_gib": 12,
        }
    return Config.model_validate(
        {
            "models": models,
            "checkpoint": {},
            "gpu": {"probe": "fake", "fake_capacity_gib": [80] * gpus},
            "host_memory": host or {"reserve_gib": 0},
            "policy": {
                "policy_type": policy,
                "min_active_secs": 1,
                "request_timeout_secs": 120,
                "drain_timeout_secs": 20,
                **(extra_policy or {}),
            },
        }
    )


class HostWatch:
    """Host RAM as the backends would hold it, derived from the commands alone.

    A backend pins its model's `host_memory_gib` from the start of an eviction that pins
    (level 1, cuda_suspend) until its process ends, except that a level-2 sleep gives a
    level-1 backup back (and a suspend's RAM comes back on resume).
    """

    def __init__(self, sim: Simulation, total_bytes: int) -> None:
        self._sim = sim
        self.total = total_bytes
        self.pins: dict[str, int] = {}  # model -> bytes pinned now
        self.peak = 0
        self._fed: int | None = None
        self._sizes = {a: int((m.host_memory_gib or 0) * GIB) for a, m in sim.config.models.items()}
        self._suspended: set[str] = set()
        self._discarding: set[str] = set()

    def __call__(
        self, core: SchedulerCore, now: float, message: Input, commands: list[Command]
    ) -> None:
        for command in commands:
            if isinstance(command, StartOp) and command.op.kind is OpKind.EVICT:
                self._evicting(command.op.model, command.op.eviction)
            elif isinstance(command, StateChanged):
                self._changed(command.model, command.after)
        held = sum(self.pins.values())
        self.peak = max(self.peak, held)
        assert held <= self.total, (now, self.pins)
        available = self.total - held
        if available != self._fed:
            self._fed = available
            self._sim._send(now, HostMemory(available))  # the daemon's poller, in virtual time

    def _evicting(self, model: str, eviction: EvictionConfig) -> None:
        if pins_host_memory(eviction):
            self.pins[model] = self._sizes[model]  # pinned from the start: the safe side
            if eviction.process is ProcessStrategy.CUDA_SUSPEND:
                self._suspended.add(model)
        elif eviction.weights is WeightStrategy.DISCARD:
            self._discarding.add(model)  # freed once the level-2 sleep is done

    def _changed(self, model: str, state: ModelState) -> None:
        if state is M.SLEEPING and model in self._discarding:
            self._discarding.discard(model)
            self.pins.pop(model, None)
        elif state in _GONE:
            self.pins.pop(model, None)
            self._suspended.discard(model)
        elif state is M.READY and model in self._suspended:
            self._suspended.discard(model)
            self.pins.pop(model, None)  # a resumed process holds its memory on the GPU again


class PinWatch:
    """Asserts that no pinned model ever starts to leave the GPU."""

    def __init__(self, pinned: set[str]) -> None:
        self.pinned = pinned
        self.seen_ready: set[str] = set()

    def __call__(
        self, core: SchedulerCore, now: float, message: Input, commands: list[Command]
    ) -> None:
        for command in commands:
            if isinstance(command, StateChanged) and command.model in self.pinned:
                assert command.after not in (M.DRAINING, M.EVICTING), (now, command)
                if command.after is M.READY:
                    self.seen_ready.add(command.model)


class AheadWatch:
    """Each eviction ahead of need (model, when) and every later wake of each model."""

    def __init__(self) -> None:
        self.ahead: list[tuple[str, float]] = []
        self.wakes: dict[str, list[float]] = {}

    def __call__(
        self, core: SchedulerCore, now: float, message: Input, commands: list[Command]
    ) -> None:
        for command in commands:
            if isinstance(command, Note) and command.event == "evict_ahead":
                self.ahead.append((str(command.fields["model"]), now))
            elif isinstance(command, StateChanged) and command.after in _UP:
                self.wakes.setdefault(command.model, []).append(now)

    def next_wake(self, model: str, after: float) -> float | None:
        return next((t for t in self.wakes.get(model, []) if t > after), None)


class Observers:
    """Several observers in one (the simulator takes one)."""

    def __init__(self, *observers: Any) -> None:
        self._observers = observers

    def __call__(
        self, core: SchedulerCore, now: float, message: Input, commands: list[Command]
    ) -> None:
        for observer in self._observers:
            observer(core, now, message, commands)


@st.composite
def stationary_load(draw: st.DrawFn) -> tuple[list[Arrival], float]:
    """Each model gets one short request every P_i seconds from a phase of its own, for
    the whole run: a stationary load (the arrivals' statistics never change)."""
    n = draw(st.integers(2, 3))
    horizon = 900.0
    arrivals: list[Arrival] = []
    for i in range(n):
        period = draw(st.floats(15, 200, allow_nan=False))
        t = draw(st.floats(0, period, allow_nan=False))  # its phase
        tokens = draw(st.integers(5, 60))
        while t < horizon:
            arrivals.append(Arrival(t, f"m{i}", 50, tokens))
            t += period
    return sorted(arrivals, key=lambda a: (a.t, a.model)), horizon
