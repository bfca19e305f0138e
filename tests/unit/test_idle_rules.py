"""Idle TTLs in the core: the ladder's validation, each step taken at its deadline (the
core's, so it runs in virtual time), what counts as use, exemptions, and reload."""

from __future__ import annotations

from typing import Any

import pytest

from gpumux.core.config import Config, ProcessStrategy
from gpumux.core.config_rules import ConfigProblems, parse_config
from gpumux.core.eviction import Step
from gpumux.core.states import ModelState
from gpumux.scheduler.inputs import AdminMode, AdminSwitch, Reload
from gpumux.scheduler.messages import Mode, OpKind
from tests.support.scheduler import Driver, make_config

pytestmark = pytest.mark.unit

LEVEL1 = {"weights": "offload", "process": "keep_running"}
STOP = {"weights": "discard", "process": "stop"}


def with_model(config: Config, name: str = "a", **fields: Any) -> Config:
    models = dict(config.models)
    models[name] = models[name].model_validate({**models[name].model_dump(), **fields})
    return config.model_copy(update={"models": models})


def ladder() -> list[dict[str, Any]]:
    return [{"after_secs": 10, "eviction": LEVEL1}, {"after_secs": 100, "eviction": STOP}]


def serve_once(d: Driver, ticket: int = 1) -> None:
    d.submit(ticket, "a")
    if d.state("a") is not ModelState.READY:
        d.finish("a")
    d.release(ticket)


def test_ttl_evicts_at_its_deadline_with_the_models_eviction() -> None:
    d = Driver(with_model(make_config(), ttl_secs=30))
    serve_once(d)
    assert d.core.next_deadline() == 30.0
    d.now = 29.9
    d.tick()
    assert d.state("a") is ModelState.READY
    d.now = 30.0
    d.tick()
    evict = d.pending_op("a")
    assert evict.op.kind is OpKind.EVICT
    assert evict.op.steps == (Step.SLEEP_OFFLOAD,)
    d.finish("a")
    assert d.state("a") is ModelState.SLEEPING
    assert d.core.next_deadline() is None  # a one-step ladder is done


def test_use_resets_the_timer_and_a_request_in_flight_holds_it() -> None:
    d = Driver(with_model(make_config(), ttl_secs=30))
    serve_once(d)
    d.now = 20.0
    d.submit(2, "a")  # in flight across the TTL
    d.now = 60.0
    d.tick()
    assert d.state("a") is ModelState.READY
    d.release(2)
    assert d.core.next_deadline() == 90.0


def test_the_ladder_sleeps_then_stops_and_the_policy_default_applies() -> None:
    config = make_config(ttl_secs=50)
    d = Driver(with_model(config, idle=ladder()))
    serve_once(d)
    d.submit(7, "b")  # b uses the policy's ttl_secs (50) with its own eviction
    d.finish("a")  # a leaves for b (placement: one 0.9 model at a time)
    d.finish("b")
    d.release(7)
    d.now = 100.0
    d.tick()
    assert d.pending_op("a").op.steps == (Step.STOP,)  # step 2 of a's ladder, from sleeping
    assert d.pending_op("b").op.kind is OpKind.EVICT  # b's TTL (50) passed too


def test_a_model_long_unused_goes_straight_to_the_deepest_due_step() -> None:
    d = Driver(with_model(make_config(), idle=ladder()))
    serve_once(d)
    d.now = 500.0
    d.tick()
    evict = d.pending_op("a")
    assert evict.op.eviction.process is ProcessStrategy.STOP


def test_manual_pin_and_warmup_are_exempt_and_never_spin_the_runner() -> None:
    d = Driver(with_model(make_config(), ttl_secs=5))
    d.admin(AdminMode(Mode.MANUAL, "a"))
    d.finish("a")
    d.now = 50.0
    d.tick()
    assert d.state("a") is ModelState.READY
    assert d.core.next_deadline() is None
    d.answer(AdminMode(Mode.AUTO, None))
    assert d.pending_op("a").op.kind is OpKind.EVICT  # the step was due all along


def test_an_admin_wake_counts_as_use_from_when_it_is_ready() -> None:
    d = Driver(with_model(make_config(), ttl_secs=5))
    d.now = 100.0
    d.admin(AdminSwitch("a"))
    d.finish("a")
    assert d.core.next_deadline() == 105.0


def test_reload_adds_and_removes_a_ttl_in_place() -> None:
    d = Driver(make_config())
    serve_once(d)
    pid = d.slot("a").pid
    reply = d.answer(Reload(with_model(d.config, ttl_secs=5)))
    assert reply.data["retuned"] == ["a"]
    assert d.core.next_deadline() == 5.0
    assert d.slot("a").pid == pid
    d.answer(Reload(make_config()))
    assert d.core.next_deadline() is None


def test_status_view_shows_when_the_next_step_falls_due() -> None:
    d = Driver(with_model(make_config(), ttl_secs=30))
    serve_once(d)
    assert d.core.view().models["a"].idle_step_at == 30.0
    assert d.core.view().models["b"].idle_step_at is None


def raw(**fields: Any) -> dict[str, Any]:
    return {"models": {"a": {"model_path": "m", "port": 8001, **fields}}}


def test_every_ladder_problem_is_listed() -> None:
    bad = [
        {"after_secs": 100, "eviction": STOP},
        {"after_secs": 50, "eviction": LEVEL1},
        {"after_secs": 200, "eviction": {"weights": "discard", "process": "keep_running"}},
    ]
    with pytest.raises(ConfigProblems) as caught:
        parse_config(raw(idle=bad, ttl_secs=3))
    errors = caught.value.errors
    assert "models.a: set `ttl_secs` or `idle`, not both" in errors
    assert "models.a.idle[1].after_secs: must be later than step 0's" in errors
    assert (
        "models.a.idle[1].eviction: offload+keep_running is not deeper than discard+stop" in errors
    )
    assert any(
        e.startswith("models.a.idle[2].eviction: a later step can only stop") for e in errors
    )
    assert len(errors) == 4


def test_a_later_step_that_does_not_stop_is_refused() -> None:
    steps = [
        {"after_secs": 10, "eviction": LEVEL1},
        {"after_secs": 20, "eviction": {"weights": "discard", "process": "keep_running"}},
    ]
    with pytest.raises(ConfigProblems) as caught:
        parse_config(raw(idle=steps))
    assert caught.value.errors == [
        "models.a.idle[1].eviction: a later step can only stop the process "
        "(a resting model is not moved from one eviction to another)"
    ]


def test_negative_ttls_are_refused() -> None:
    with pytest.raises(ConfigProblems) as caught:
        parse_config({**raw(ttl_secs=-1), "policy": {"ttl_secs": -2}})
    assert sorted(e.split(":")[0] for e in caught.value.errors) == [
        "models.a.ttl_secs",
        "policy.ttl_secs",
    ]
