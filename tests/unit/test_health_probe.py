"""The active health probe asks a ready model whether it sleeps only while it stays ready.

The probe is chosen from a snapshot, then awaits `/health` before `/is_sleeping`; a
switch can begin on the model meanwhile (and end: away and back). Its `/is_sleeping`
must then not land among the switch's dev-route calls, and an answer about a stay in
READY that ended must not be reported as "found asleep".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from gpumux.core.config import SupervisionConfig
from gpumux.core.states import ModelState
from gpumux.daemon.health import HealthMonitor
from gpumux.http.passive_health import BackendStreaks

pytestmark = pytest.mark.unit

PID = 4242


@dataclass
class FakeSlot:
    """The fields of a model's status in the scheduler's view that the probe reads."""

    alias: str
    pid: int | None = PID
    state: ModelState = ModelState.READY
    operation: object | None = None
    ready_since: float | None = 10.0


@dataclass
class FakeView:
    """The scheduler's published view, reduced to what the probe reads; the test moves it."""

    models: dict[str, FakeSlot] = field(default_factory=dict)


@dataclass
class FakeScheduler:
    """Records what the monitor reports; `view.models` is the state the test moves."""

    view: FakeView = field(default_factory=FakeView)
    asleep: list[tuple[str, int]] = field(default_factory=list)
    unhealthy: list[tuple[str, int]] = field(default_factory=list)

    def report_asleep(self, model: str, pid: int) -> None:
        self.asleep.append((model, pid))

    def report_unhealthy(self, model: str, pid: int) -> None:
        self.unhealthy.append((model, pid))


class FakeBackend:
    """`/health` waits for the test (`answer_health`); `/is_sleeping` says True."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.health_asked = asyncio.Event()
        self.health_answer = asyncio.Event()

    async def health(self, timeout: float) -> bool:
        self.calls.append("GET /health")
        self.health_asked.set()
        await self.health_answer.wait()
        return True

    async def is_sleeping(self, timeout: float) -> bool:
        self.calls.append("GET /is_sleeping")
        return True


def monitor(scheduler: FakeScheduler, backend: FakeBackend) -> HealthMonitor:
    return HealthMonitor(
        scheduler,  # type: ignore[arg-type]
        lambda alias: backend,  # type: ignore[arg-type,return-value]
        SupervisionConfig(),
        BackendStreaks(threshold=0),
    )


async def probe_while(
    scheduler: FakeScheduler, backend: FakeBackend, meanwhile: Callable[[], None]
) -> None:
    """One probe round; `meanwhile()` runs while the probe awaits `/health`."""
    probe = asyncio.create_task(monitor(scheduler, backend).probe_once())
    await backend.health_asked.wait()
    meanwhile()
    backend.health_answer.set()
    await probe


async def test_a_ready_model_found_asleep_is_reported() -> None:
    scheduler = FakeScheduler(FakeView({"a": FakeSlot("a")}))
    backend = FakeBackend()
    await probe_while(scheduler, backend, lambda: None)
    assert backend.calls == ["GET /health", "GET /is_sleeping"]
    assert scheduler.asleep == [("a", PID)]


async def test_no_is_sleeping_once_a_switch_began_during_health() -> None:
    slot = FakeSlot("a")
    scheduler = FakeScheduler(FakeView({"a": slot}))
    backend = FakeBackend()

    def switch_begins() -> None:
        slot.operation = object()  # the scheduler started moving `a` off the GPU

    await probe_while(scheduler, backend, switch_begins)
    assert backend.calls == ["GET /health"]
    assert scheduler.asleep == []


async def test_an_answer_about_a_stay_in_ready_that_ended_is_not_reported() -> None:
    slot = FakeSlot("a")
    scheduler = FakeScheduler(FakeView({"a": slot}))
    backend = FakeBackend()
    original = backend.is_sleeping

    async def is_sleeping_while_the_model_goes_and_comes_back(timeout: float) -> bool:
        answer = await original(timeout)  # asleep: vLLM answered during a switch
        slot.ready_since = 20.0  # ... which then woke the model again
        return answer

    backend.is_sleeping = is_sleeping_while_the_model_goes_and_comes_back  # type: ignore[method-assign]
    await probe_while(scheduler, backend, lambda: None)
    assert backend.calls == ["GET /health", "GET /is_sleeping"]
    assert scheduler.asleep == []


async def test_a_sleeping_model_is_only_asked_for_health() -> None:
    slot = FakeSlot("a", state=ModelState.SLEEPING, ready_since=None)
    scheduler = FakeScheduler(FakeView({"a": slot}))
    backend = FakeBackend()
    await probe_while(scheduler, backend, lambda: None)
    assert backend.calls == ["GET /health"]
    assert scheduler.asleep == []
