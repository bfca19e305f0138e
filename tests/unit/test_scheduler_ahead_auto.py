"""The core's eviction ahead of need, `eviction: "auto"`, and the level-1 backup kept while
awake, driven synchronously through `SchedulerCore`."""

from __future__ import annotations

from typing import Any

import pytest

from gpumux.core.config import Config, EvictionConfig, ProcessStrategy, WeightStrategy
from gpumux.core.eviction import Step
from gpumux.core.states import ModelState
from gpumux.scheduler.messages import Note, OpKind
from tests.support.scheduler import Driver, make_config

pytestmark = pytest.mark.unit
GIB = 1024**3
M = ModelState
LEVEL1 = EvictionConfig(weights=WeightStrategy.OFFLOAD, process=ProcessStrategy.KEEP_RUNNING)
LEVEL2 = EvictionConfig(weights=WeightStrategy.DISCARD, process=ProcessStrategy.KEEP_RUNNING)


def config_with(**changes: Any) -> Config:
    raw: dict[str, Any] = make_config(models=2).model_dump(mode="json")
    for key, value in changes.items():
        if key == "model":
            for model in raw["models"].values():
                model.update(value)
        else:
            raw[key] = {**raw.get(key, {}), **value}
    return Config.model_validate(raw)


def notes(d: Driver, event: str) -> list[Note]:
    return [c for c in d.log if isinstance(c, Note) and c.event == event]


def serve(d: Driver, ticket: int, model: str) -> None:
    """Request `model` at `d.now`, finish what it takes, release the request at once."""
    d.submit(ticket, model)
    while ticket not in d.granted:
        start = next(iter(d.ops.values()))
        d.finish(start.op.model)
    d.release(ticket)


def alternate(d: Driver, rounds: int, period: float) -> int:
    """a at 0, b at period/2, a at period, ...: b is always predicted next after a."""
    ticket = 0
    for i in range(rounds):
        for offset, model in ((0.0, "a"), (period / 2, "b")):
            d.now = i * period + offset
            ticket += 1
            serve(d, ticket, model)
    return ticket


def test_an_idle_model_leaves_ahead_for_the_model_predicted_next() -> None:
    d = Driver(config_with(policy={"min_active_secs": 1}))
    ticket = alternate(d, rounds=4, period=100.0)
    d.now = 400.0
    serve(d, ticket + 1, "a")  # a is up; b is predicted at 450, a not before 500
    assert d.state("a") is M.READY
    d.now = 402.0
    d.tick()
    assert d.state("a") is M.EVICTING, "a should have left ahead of b's need"
    assert notes(d, "evict_ahead")[-1].fields == {"model": "a", "for": "b", "queued": 0}
    d.finish("a")
    d.now = 450.0
    d.submit(ticket + 2, "b")
    wake = d.pending_op("b")  # the switch pays only b's wake: nothing to evict first
    assert wake.op.kind is OpKind.WAKE


def test_evict_ahead_off_leaves_idle_models_where_they_are() -> None:
    d = Driver(config_with(policy={"min_active_secs": 1, "evict_ahead": False}))
    ticket = alternate(d, rounds=4, period=100.0)
    d.now = 400.0
    serve(d, ticket + 1, "a")
    d.now = 440.0
    d.tick()
    assert d.state("a") is M.READY
    assert not notes(d, "evict_ahead")


def test_a_model_with_work_in_flight_is_never_evicted_ahead() -> None:
    d = Driver(config_with(policy={"min_active_secs": 1}))
    ticket = alternate(d, rounds=4, period=100.0)
    d.now = 400.0
    d.submit(ticket + 1, "a")
    while ticket + 1 not in d.granted:
        d.finish(next(iter(d.ops.values())).op.model)
    d.now = 440.0  # a still serves its request (never released)
    d.tick()
    assert d.state("a") is M.READY
    assert not notes(d, "evict_ahead")


def test_a_model_needed_back_within_its_round_trip_stays() -> None:
    d = Driver(config_with(policy={"min_active_secs": 1}))
    ticket = alternate(d, rounds=4, period=8.0)  # a every 8 s
    for op in ("evict", "wake"):  # a round trip of a costs 8 s: a is needed back sooner
        d.core.costs.ops[f"a|{op}|offload+keep_running"] = 4.0
    d.now = 32.0
    serve(d, ticket + 1, "a")
    d.now = 33.0
    d.tick()
    assert d.state("a") is M.READY
    assert not notes(d, "evict_ahead")


def test_a_level1_backup_is_held_while_awake_and_given_back_by_level_2() -> None:
    config = config_with(model={"host_memory_gib": 10}, host_memory={"reserve_gib": 1})
    d = Driver(config)
    d.read_host(100)
    serve(d, 1, "a")
    d.now = 10
    serve(d, 2, "b")  # a sleeps at level 1 (its first: the pin is taken)
    d.now = 20
    serve(d, 3, "a")  # a wakes: the backup stays
    host = d.core.host
    assert d.state("a") is M.READY
    assert d.slot("a").l1_backup
    assert host.held_bytes(d.slot("a")) == 10 * GIB
    view = d.core.view()
    assert view.models["a"].host_pinned_bytes == 10 * GIB
    assert view.models["a"].level1_backup
    # RAM is short now, yet a's next level-1 sleep needs none: no downgrade.
    d.read_host(5)
    d.now = 30
    d.submit(4, "b")
    assert d.pending_op("a").op.eviction == LEVEL1
    assert not notes(d, "host_memory_downgrade")
    d.finish("a")
    d.finish("b")
    d.release(4)
    # A level-2 eviction gives the backup back.
    d.slot("a").eviction = LEVEL2
    d.now = 40
    serve(d, 5, "a")
    d.now = 50
    serve(d, 6, "b")
    assert d.state("a") is M.SLEEPING
    assert not d.slot("a").l1_backup
    assert host.held_bytes(d.slot("a")) == 0


def test_auto_takes_level1_with_room_and_level2_when_host_ram_is_short() -> None:
    config = config_with(
        model={"host_memory_gib": 30}, policy={"eviction": "auto"}, host_memory={"reserve_gib": 2}
    )
    d = Driver(config)
    assert d.slot("a").auto
    assert d.slot("a").eviction == LEVEL1  # the nominal level
    d.read_host(100)
    serve(d, 1, "a")
    d.now = 10
    d.submit(2, "b")
    assert d.pending_op("a").op.eviction == LEVEL1
    chosen = notes(d, "auto_eviction")[-1].fields
    assert chosen["eviction"] == "offload+keep_running"
    prices = chosen["prices_s"]
    assert isinstance(prices, dict)
    assert set(prices) == {
        "offload+keep_running",
        "discard+keep_running",
        "retain+stop",
    }
    d.finish("a")
    d.finish("b")
    d.release(2)
    d.read_host(20)  # b's first level-1 sleep would leave 20 - 30 < 2 GiB
    d.now = 20
    d.submit(3, "a")
    assert d.pending_op("b").op.eviction == LEVEL2
    d.finish("b")
    wake = d.pending_op("a")
    assert wake.op.steps == (Step.WAKE_ALL,)  # a comes back from its level-1 sleep


def test_auto_learns_each_level_per_model() -> None:
    config = config_with(policy={"eviction": "auto"})
    d = Driver(config)
    serve(d, 1, "a")
    d.now = 10
    d.submit(2, "b")
    d.now = 13
    d.finish("a")
    assert d.core.costs.learned("a", "evict", "offload+keep_running") == pytest.approx(3.0)
    assert d.core.costs.learned("a", "evict", "discard+keep_running") is None


def test_no_time_to_look_again_when_no_model_could_take_the_idle_ones_place() -> None:
    # The pass runs after every request: with nothing to leave for, it predicts nothing
    # and leaves the runner no timer to arm.
    alone = Driver(make_config(models=1, min_active_secs=1))
    for ticket in range(1, 5):
        alone.now = ticket * 10.0
        serve(alone, ticket, "a")
    alone.now += 2.0
    alone.tick()
    assert alone.core.next_deadline() is None
    assert alone.state("a") is M.READY
    # The same idle model with another one on its GPU: a time to look again.
    shared = Driver(config_with(policy={"min_active_secs": 1}))
    ticket = alternate(shared, rounds=4, period=100.0)
    shared.now = 400.0
    serve(shared, ticket + 1, "a")
    assert shared.core.next_deadline() is not None
