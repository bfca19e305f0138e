"""The scheduler core's host-RAM budget (ecosystem case 27), driven synchronously."""

from __future__ import annotations

from typing import Any

import pytest

from gpumux.core.config import Config, EvictionConfig, ProcessStrategy, WeightStrategy
from gpumux.core.eviction import Step, pins_host_memory, without_host_pin
from gpumux.core.states import ModelState
from gpumux.policy.costs import SwitchCosts
from gpumux.scheduler.messages import Note, OpKind, StartOp
from gpumux.scheduler.state.host_budget import HostBudget
from gpumux.scheduler.state.models import Models
from gpumux.scheduler.state.outbox import Outbox
from gpumux.scheduler.state.slots import Ticket
from tests.support.scheduler import Driver, make_config

pytestmark = pytest.mark.unit
GIB = 1024**3
M = ModelState


def host_config(
    models: int = 3, *, reserve_gib: float = 1.0, pin_gib: float | None = 1.0
) -> Config:
    raw: dict[str, Any] = make_config(models=models).model_dump(mode="json")
    raw["host_memory"] = {"reserve_gib": reserve_gib}
    for model in raw["models"].values():
        model["host_memory_gib"] = pin_gib
    return Config.model_validate(raw)


def serve_once(d: Driver, ticket: int, model: str) -> None:
    """Request `model`, let every operation it needs finish, and release the request."""
    d.submit(ticket, model)
    while any(s.op.model != model or s.op.kind is not OpKind.WAKE for s in d.ops.values()):
        other = next(s for s in d.ops.values() if s.op.kind is not OpKind.WAKE)
        d.finish(other.op.model)
    d.finish(model)
    assert ticket in d.granted
    d.release(ticket)


def notes(d: Driver, event: str) -> list[Note]:
    return [c for c in d.log if isinstance(c, Note) and c.event == event]


def sleeping_table(config: Config, *sleepers: str) -> Models:
    """A model table with `sleepers` asleep at level 1 (pinning) and the rest ready."""
    models = Models({0: 80 * GIB}, SwitchCosts(), config.policy)
    for alias, model in config.models.items():
        models.add(alias, model, config.eviction_for(alias), GIB)
        slot = models.slots[alias]
        slot.state = M.SLEEPING if alias in sleepers else M.READY
        slot.evicted_weights = WeightStrategy.OFFLOAD if alias in sleepers else None
    return models


def test_the_budget_alone_stops_sleepers_oldest_first_then_downgrades() -> None:
    """HostBudget without the core: a table, an outbox, readings and eviction requests."""
    models = sleeping_table(host_config(), "a", "b")
    budget = HostBudget(models, reserve_bytes=GIB)
    budget.evicted(models.slots["b"], now=1.0)
    budget.evicted(models.slots["a"], now=2.0)
    budget.reading(int(2.5 * GIB), now=3.0)
    out = Outbox()
    # c would pin 1 GiB: 2.5 - 1 = 1.5 >= 1, fine.
    assert budget.safe_eviction(models.slots["c"], 3.0, out) == models.slots["c"].eviction
    budget.reading(int(1.5 * GIB), now=4.0)
    assert budget.safe_eviction(models.slots["c"], 4.0, out) is None  # b (oldest) goes first
    stop = [c for c in out.take() if isinstance(c, StartOp)]
    assert [s.op.model for s in stop] == ["b"]
    assert budget.safe_eviction(models.slots["c"], 4.0, out) is None  # until a reading
    models.slots["b"].state = M.STOPPED
    models.slots["a"].queue.append(Ticket(1, "a", 5.0, 35.0))  # a is about to wake
    budget.reading(int(1.5 * GIB), now=5.0)
    downgraded = budget.safe_eviction(models.slots["c"], 5.0, out)
    assert downgraded == without_host_pin(models.slots["c"].eviction)
    assert [n.event for n in out.take() if isinstance(n, Note)] == ["host_memory_downgrade"]


def test_the_oldest_idle_sleeper_is_stopped_before_a_pin_would_break_the_reserve() -> None:
    d = Driver(host_config())
    d.read_host(3.5)
    serve_once(d, 1, "a")
    d.now = 10
    serve_once(d, 2, "b")  # a sleeps at level 1: 1 GiB pinned
    d.read_host(2.5)
    d.now = 20
    serve_once(d, 3, "c")  # b sleeps too: 2.5 - 1 = 1.5 >= 1, fine
    assert [d.state(m) for m in "abc"] == [M.SLEEPING, M.SLEEPING, M.READY]
    d.read_host(1.5)
    d.now = 30
    d.submit(4, "a")  # c must leave: 1.5 - 1 < 1 -> b (oldest idle pin) goes first
    assert d.state("b") is M.STOPPING
    assert d.state("c") is M.DRAINING
    assert all(s.op.model != "c" for s in d.ops.values()), "c pinned before b was gone"
    assert notes(d, "host_memory_pressure")[-1].fields["model"] == "b"
    d.finish("b")
    assert d.state("c") is M.DRAINING, "waits for a reading that shows b's memory back"
    d.read_host(2.5)
    evict = d.pending_op("c")
    assert evict.op.steps == (Step.SLEEP_OFFLOAD,)
    d.finish("c")
    d.finish("a")
    assert 4 in d.granted


def test_a_victim_is_evicted_at_level_2_when_no_sleeper_can_make_room() -> None:
    d = Driver(host_config(models=2))
    d.read_host(1.8)
    serve_once(d, 1, "a")
    d.submit(2, "b")  # a would leave 0.8 GiB: below the reserve, and nobody else to stop
    evict = d.pending_op("a")
    assert evict.op.eviction == EvictionConfig(
        weights=WeightStrategy.DISCARD, process=ProcessStrategy.KEEP_RUNNING
    )
    assert evict.op.steps == (Step.SLEEP_DISCARD,)
    assert notes(d, "host_memory_downgrade")
    d.finish("a")
    d.finish("b")
    d.release(2)
    # The wake after a level-2 sleep reloads the weights (never garbage).
    d.submit(3, "a")
    d.finish("b")
    wake = d.pending_op("a")
    assert Step.RELOAD_WEIGHTS in wake.op.steps


def test_a_low_reading_stops_the_oldest_pinning_sleeper_one_at_a_time() -> None:
    d = Driver(host_config(pin_gib=None))  # no estimates: only the reading guard acts
    d.read_host(50)
    serve_once(d, 1, "a")
    d.now = 10
    serve_once(d, 2, "b")
    d.now = 20
    serve_once(d, 3, "c")
    assert [d.state(m) for m in "abc"] == [M.SLEEPING, M.SLEEPING, M.READY]
    d.read_host(0.5)  # something else ate the RAM
    assert d.state("a") is M.STOPPING
    assert d.state("b") is M.SLEEPING
    d.read_host(0.5)  # a is still stopping: its memory is not back yet, so nothing more
    assert d.state("b") is M.SLEEPING
    d.finish("a")
    d.read_host(0.6)  # a reading after a's stop: still low -> the next oldest goes
    assert d.state("b") is M.STOPPING
    d.finish("b")
    d.read_host(0.6)  # nobody left who pins: the awake model is never touched
    assert d.state("c") is M.READY
    assert not d.ops


def test_the_pin_is_learned_from_the_drop_across_the_eviction() -> None:
    d = Driver(host_config(models=2, pin_gib=None))
    d.read_host(10)
    serve_once(d, 1, "a")
    d.submit(2, "b")
    d.finish("a")  # a: level-1 sleep; the reading before it was 10 GiB
    d.read_host(7)
    assert d.core.host.pin_estimate(d.slot("a")) == 3 * GIB
    assert d.core.host.pin_estimate(d.slot("b")) is None


def test_reserve_zero_turns_the_budget_off() -> None:
    d = Driver(host_config(models=2, reserve_gib=0))
    d.read_host(0.1)
    serve_once(d, 1, "a")
    d.submit(2, "b")
    assert d.pending_op("a").op.steps == (Step.SLEEP_OFFLOAD,)
    d.finish("a")
    d.read_host(0.01)
    assert d.state("a") is M.SLEEPING


@pytest.mark.parametrize(
    ("weights", "process", "pins", "instead"),
    [
        ("offload", "keep_running", True, ("discard", "keep_running")),
        ("discard", "keep_running", False, ("discard", "keep_running")),
        ("retain", "keep_running", False, ("discard", "keep_running")),
        ("retain", "cuda_suspend", True, ("retain", "stop")),
        ("offload", "cuda_suspend", True, ("offload", "stop")),
        ("offload", "checkpoint", False, ("offload", "stop")),
        ("retain", "stop", False, ("retain", "stop")),
    ],
)
def test_which_evictions_pin_host_memory_and_their_downgrade(
    weights: str, process: str, pins: bool, instead: tuple[str, str]
) -> None:
    eviction = EvictionConfig(weights=WeightStrategy(weights), process=ProcessStrategy(process))
    assert pins_host_memory(eviction) is pins
    downgraded = without_host_pin(eviction)
    assert (downgraded.weights.value, downgraded.process.value) == instead
    assert not pins_host_memory(downgraded)
