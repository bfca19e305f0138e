"""Pins and preload in the core: a held model is never a victim (placement or idle TTL),
an operator evicts it only with force, pin/unpin at run time with a fit check, several
pins at once, manual mode untouched; preload in order as far as memory allows."""

from __future__ import annotations

from typing import Any

import pytest

from gpumux.core.config import Config
from gpumux.core.config_rules import ConfigProblems, parse_config
from gpumux.core.states import ModelState
from gpumux.scheduler.inputs import AdminEvict, AdminMode, AdminPin, Reload
from gpumux.scheduler.messages import AdminRefusal, Mode, OpKind
from tests.support.scheduler import Driver, make_config

pytestmark = pytest.mark.unit


def with_fields(config: Config, **per_model: dict[str, Any]) -> Config:
    models = dict(config.models)
    for name, fields in per_model.items():
        models[name] = models[name].model_validate({**models[name].model_dump(), **fields})
    return config.model_copy(update={"models": models})


def test_a_pinned_model_is_never_a_victim_and_others_wait() -> None:
    d = Driver(with_fields(make_config(), a={"pinned": True}))
    d.submit(1, "a")
    d.finish("a")
    d.release(1)
    d.submit(2, "b")  # b needs a's memory; a is held
    assert d.state("a") is ModelState.READY
    assert not d.ops
    d.now = 31.0
    d.tick()
    assert d.rejected[2].http_status == 504  # bounded by request_timeout_secs, as any wait


def test_several_pins_that_fit_and_the_ttl_leaves_them_alone() -> None:
    config = with_fields(
        make_config(util=0.3, models=3, ttl_secs=5), a={"pinned": True}, b={"pinned": True}
    )
    d = Driver(config)
    for ticket, model in enumerate("abc", 1):
        d.submit(ticket, model)
        d.finish(model)
        d.release(ticket)
    d.now = 10.0
    d.tick()
    assert d.state("a") is ModelState.READY
    assert d.state("b") is ModelState.READY
    assert d.pending_op("c").op.kind is OpKind.EVICT  # unpinned: its TTL applies


def test_evict_needs_force_for_a_pinned_model_and_pin_unpin_at_run_time() -> None:
    d = Driver(make_config())
    d.submit(1, "a")
    d.finish("a")
    d.release(1)
    assert d.answer(AdminPin("a", pinned=True)).ok
    assert d.core.view().models["a"].pinned
    refused = d.answer(AdminEvict("a"))
    assert refused.refusal is AdminRefusal.BUSY
    assert "force" in refused.detail
    assert d.answer(AdminEvict("a", force=True)).ok
    d.finish("a")
    assert d.state("a") is ModelState.SLEEPING
    assert d.answer(AdminPin("a", pinned=False)).ok
    assert d.core.view().held == ()


def test_a_pin_that_cannot_be_awake_with_the_others_is_refused() -> None:
    d = Driver(make_config())  # two 0.9 models on one GPU
    assert d.answer(AdminPin("a", pinned=True)).ok
    refused = d.answer(AdminPin("b", pinned=True))
    assert refused.refusal is AdminRefusal.BAD_REQUEST
    assert "cannot be awake together on GPU 0" in refused.detail
    assert d.core.view().held == ("a",)


def test_manual_mode_keeps_working_beside_pins() -> None:
    d = Driver(with_fields(make_config(util=0.4, models=3), a={"pinned": True}))
    d.admin(AdminMode(Mode.MANUAL, "b"))
    d.finish("b")
    assert d.core.view().pinned == "b"
    assert d.core.view().held == ("a",)
    assert d.answer(AdminMode(Mode.AUTO, None)).ok
    assert d.core.view().held == ("a",)


def test_reload_pins_and_unpins_as_the_file_says() -> None:
    d = Driver(make_config())
    reply = d.answer(Reload(with_fields(d.config, a={"pinned": True})))
    assert reply.data["retuned"] == ["a"]
    assert d.core.view().held == ("a",)
    d.answer(Reload(make_config()))
    assert d.core.view().held == ()


def preload_config(preload: list[str], util: float = 0.4) -> Config:
    raw = make_config(util=util, models=3).model_dump()
    raw["models"]["c"]["aliases"] = ["gamma"]
    return Config.model_validate({**raw, "preload": preload})


def test_preload_brings_models_up_in_order_as_far_as_memory_allows() -> None:
    d = Driver(preload_config(["gamma", "a", "b"]))
    d.tick()
    assert d.pending_op("c").op.kind is OpKind.WAKE  # one at a time, in order
    assert len(d.ops) == 1
    d.finish("c")
    d.finish("a")
    assert d.state("c") is ModelState.READY
    assert d.state("a") is ModelState.READY
    assert not d.ops  # b does not fit beside them without evicting: skipped
    assert d.core.view().preload == {
        "c": "started",
        "a": "started",
        "b": "skipped: does not fit without evicting another model",
    }


def raw(**top: Any) -> dict[str, Any]:
    models = {
        "a": {"model_path": "m", "port": 8001, "extra_args": ["--gpu-memory-utilization", "0.6"]},
        "b": {"model_path": "m", "port": 8002, "extra_args": ["--gpu-memory-utilization", "0.5"]},
    }
    for name in top.pop("pinned", []):
        models[name]["pinned"] = True
    return {"models": models, **top}


def test_pins_that_cannot_fit_and_bad_preloads_are_all_listed() -> None:
    with pytest.raises(ConfigProblems) as caught:
        parse_config(raw(pinned=["a", "b"], preload=["a", "zeta", "a"]))
    assert caught.value.errors == [
        "preload[1]: no model or alias is named 'zeta'",
        "preload[2]: 'a' brings up model 'a' a second time",
        "pinned: a (0.6), b (0.5) cannot be awake together on GPU 0 "
        "(their memory shares add up to 1.1 > 1)",
    ]
