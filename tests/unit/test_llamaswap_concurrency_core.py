"""`max_concurrency`: leases beyond the cap wait in the model's queue (max_queue → 429 and
request_timeout_secs → 504 still bound them), and a reload retunes the cap in place."""

from __future__ import annotations

import pytest

from gpumux.core.config import Config
from gpumux.core.config_rules import ConfigProblems, parse_config
from gpumux.core.errors import QueueFull, QueueTimeout
from gpumux.core.states import ModelState
from gpumux.scheduler.inputs import Reload
from tests.support.scheduler import Driver, make_config

pytestmark = pytest.mark.unit


def capped(cap: int | None, config: Config | None = None) -> Config:
    config = config or make_config()
    models = dict(config.models)
    models["a"] = models["a"].model_copy(update={"max_concurrency": cap})
    return config.model_copy(update={"models": models})


def test_requests_beyond_the_cap_wait_and_are_granted_in_order_on_release() -> None:
    d = Driver(capped(2))  # make_config: max_queue 3
    for ticket in (1, 2, 3):
        d.submit(ticket, "a")
    d.finish("a")
    assert d.granted == [1, 2]
    assert len(d.slot("a").queue) == 1
    d.submit(4, "a")
    d.release(2)
    assert d.granted == [1, 2, 3]
    d.release(1)
    assert d.granted == [1, 2, 3, 4]
    assert d.state("a") is ModelState.READY


def test_a_full_queue_behind_the_cap_is_429_and_a_long_wait_504() -> None:
    d = Driver(capped(1))  # make_config: max_queue 3, request_timeout_secs 30
    d.submit(1, "a")
    d.finish("a")
    for ticket in (2, 3, 4, 5):
        d.submit(ticket, "a")
    assert isinstance(d.rejected[5], QueueFull)
    d.now = 31.0
    d.tick()
    assert all(isinstance(d.rejected[t], QueueTimeout) for t in (2, 3, 4))
    assert d.granted == [1]


def test_reload_raises_the_cap_in_place_without_a_restart() -> None:
    d = Driver(capped(1))
    for ticket in (1, 2, 3):
        d.submit(ticket, "a")
    d.finish("a")
    pid = d.slot("a").pid
    reply = d.answer(Reload(capped(None, d.config)))
    assert reply.data["changed"] == []
    assert reply.data["retuned"] == ["a"]
    assert d.granted == [1, 2, 3]
    assert d.slot("a").pid == pid
    assert d.state("a") is ModelState.READY


def test_a_cap_below_one_or_not_an_integer_is_refused() -> None:
    raw = {
        "models": {
            "a": {"model_path": "m", "port": 8001, "max_concurrency": 0},
            "b": {"model_path": "m", "port": 8002, "max_concurrency": -3},
            "c": {"model_path": "m", "port": 8003, "max_concurrency": "2"},
        }
    }
    with pytest.raises(ConfigProblems) as caught:
        parse_config(raw)
    where = sorted(e.split(":")[0] for e in caught.value.errors)
    assert where == [
        "models.a.max_concurrency",
        "models.b.max_concurrency",
        "models.c.max_concurrency",
    ]
