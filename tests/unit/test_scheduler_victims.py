"""Through the core: the policy's GDSF rank chooses the victim among placement's candidates."""

from __future__ import annotations

import pytest

from gpumux.core.states import ModelState
from tests.support.scheduler import Driver, make_config

pytestmark = pytest.mark.unit
M = ModelState


def serve(d: Driver, ticket: int, model: str) -> None:
    d.submit(ticket, model)
    while ticket not in d.granted:
        d.finish(next(iter(d.ops.values())).op.model)
    d.release(ticket)


def six_for_a_then_one_for_b_then_c(victims: str) -> Driver:
    d = Driver(make_config(util=0.45, models=3, evict_ahead=False, victims=victims))
    ticket = 0
    for i in range(6):
        d.now = float(i)
        ticket += 1
        serve(d, ticket, "a")
    d.now = 10.0
    serve(d, ticket + 1, "b")
    d.now = 20.0
    d.submit(ticket + 2, "c")
    return d


def test_victims_cost_keeps_the_often_needed_model_and_lru_the_last_used() -> None:
    leaving = {M.DRAINING, M.EVICTING}
    by_cost = six_for_a_then_one_for_b_then_c("cost")
    assert by_cost.state("a") is M.READY
    assert by_cost.state("b") in leaving
    by_lru = six_for_a_then_one_for_b_then_c("lru")
    assert by_lru.state("a") in leaving
    assert by_lru.state("b") is M.READY


def test_the_often_needed_model_stays_though_it_was_used_longest_ago() -> None:
    d = Driver(make_config(util=0.45, models=3, evict_ahead=False))
    ticket = 0
    for i in range(6):  # a: six requests; b: one, after a's last
        d.now = float(i)
        ticket += 1
        serve(d, ticket, "a")
    d.now = 10.0
    serve(d, ticket + 1, "b")
    assert [d.state(m) for m in "ab"] == [M.READY, M.READY]
    d.now = 20.0
    d.submit(ticket + 2, "c")  # one must leave: LRU would pick a, GDSF picks b
    assert d.state("b") is not M.READY
    assert d.state("a") is M.READY


def test_a_pinned_model_stays_even_when_it_ranks_lowest() -> None:
    config = make_config(util=0.45, models=3, evict_ahead=False)
    raw = config.model_dump(mode="json")
    raw["models"]["b"]["pinned"] = True
    d = Driver(type(config).model_validate(raw))
    serve(d, 1, "a")
    serve(d, 2, "a")
    d.now = 10.0
    serve(d, 3, "b")
    d.now = 20.0
    d.submit(4, "c")
    assert d.state("b") is M.READY
    assert d.state("a") is not M.READY
