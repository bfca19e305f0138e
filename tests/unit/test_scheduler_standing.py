"""Standing grants and quiet releases in the core (`state/standing.py`), driven as the
runner drives them: a ready model with room and nothing queued is stocked, a grant taken
becomes a lease as of when it was taken, and every step that changes what a request would
get withdraws the grants that no longer hold, in the same step."""

from __future__ import annotations

import pytest

from gpumux.core.config import Config
from gpumux.core.states import ModelState, RequestState
from gpumux.scheduler.inputs import AdminEvict, BeginShutdown, ProcessExited, Reload
from gpumux.scheduler.messages import Grant, QueueWait, Stock
from gpumux.scheduler.state.standing import FIRST_STOCK
from tests.support.scheduler import Driver, make_config

pytestmark = pytest.mark.unit

STAND = 4


def capped(cap: int) -> Config:
    config = make_config()
    models = {a: m.model_copy(update={"max_concurrency": cap}) for a, m in config.models.items()}
    return config.model_copy(update={"models": models})


def ready(d: Driver, model: str = "a", ticket: int = 1) -> None:
    """`model` cold-started for one request that has since finished."""
    d.submit(ticket, model)
    d.finish(model)
    d.release(ticket)


def stocks(d: Driver, model: str) -> list[Stock]:
    return [c for c in d.log if isinstance(c, Stock) and c.model == model]


def test_a_ready_model_is_stocked_with_grants_for_its_process() -> None:
    d = Driver(make_config(), standing=STAND)
    d.submit(1, "a")
    assert not d.shelves.get("a")  # starting: a request now would queue
    d.finish("a")
    shelf = d.shelves["a"]
    assert len(shelf) == STAND
    slot = d.slot("a")
    assert {(g.model, g.pid, g.port) for g in shelf} == {("a", slot.pid, 8100)}
    assert all(g.ticket < 0 for g in shelf)  # never one of the runner's tickets
    assert not d.shelves.get("b")  # not ready: nothing stands for it


def test_a_taken_grant_is_a_lease_from_when_it_was_taken() -> None:
    d = Driver(make_config(), standing=STAND)
    ready(d)
    arrivals = d.core.models.demand.of("a").arrivals
    d.now = 5.0
    grant = d.take("a")
    d.now = 7.0
    d.tick()  # the runner's next step hands the claim over
    slot = d.slot("a")
    assert slot.leases == {grant.ticket}
    assert slot.last_used_at == 5.0
    assert d.core.queues.tickets[grant.ticket].state is RequestState.GRANTED
    assert d.core.load()[1] == {"a": 1, "b": 0}
    assert d.core.models.demand.of("a").arrivals == arrivals + 1
    assert QueueWait("a", 0.0) in d.log
    assert len(d.shelves["a"]) == STAND  # restocked in the same step
    d.release_quietly(grant.ticket)
    d.now = 9.0
    d.tick()
    assert not slot.leases
    assert slot.last_used_at == 7.0  # when it was released, not when the core heard


def test_max_concurrency_counts_the_grants_standing() -> None:
    d = Driver(capped(2), standing=STAND)
    ready(d)
    assert len(d.shelves["a"]) == 2
    first, second = d.take("a"), d.take("a")
    d.tick()
    assert d.shelves["a"] == []  # both leases are out: no room for a third
    d.submit(9, "a")  # a third request asks, and waits for room
    assert 9 not in d.granted
    d.release(first.ticket)
    assert 9 in d.granted
    d.release(second.ticket)
    d.release(9)
    assert len(d.shelves["a"]) == 2


def test_a_request_that_asks_while_grants_stand_gets_one_within_the_cap() -> None:
    """A request that found the shelf empty may reach the core after a restock: it is
    granted, and the grants standing make room for it rather than exceed the cap."""
    d = Driver(capped(2), standing=STAND)
    ready(d)
    d.submit(5, "a")
    assert 5 in d.granted
    assert len(d.slot("a").leases) + len(d.shelves["a"]) == 2


def test_a_switch_withdraws_the_grants_in_the_step_that_drains() -> None:
    d = Driver(make_config(), standing=STAND)
    ready(d)
    held = d.take("a")
    withdrawn = [g.ticket for g in d.shelves["a"]]
    d.submit(2, "b")  # a and b cannot share the GPU: a drains for b
    assert d.state("a") is ModelState.DRAINING
    assert d.slot("a").leases == {held.ticket}  # the claim came first: the drain waits
    assert d.shelves["a"] == []
    assert stocks(d, "a")[-1] == Stock("a", (), replace=True)
    assert all(t not in d.core.queues.tickets for t in withdrawn)
    assert not d.core.releases_can_wait  # the drain waits for that release
    d.release(held.ticket)
    d.finish("a")
    d.finish("b")
    assert 2 in d.granted
    assert len(d.shelves["b"]) == STAND
    assert d.shelves["a"] == []


@pytest.mark.parametrize("change", ["evict", "crash", "shutdown", "reload_removes"])
def test_whatever_takes_the_model_away_withdraws_its_grants(change: str) -> None:
    d = Driver(make_config(), standing=STAND)
    ready(d)
    assert d.shelves["a"]
    if change == "evict":
        d.answer(AdminEvict("a"))
    elif change == "crash":
        pid = d.slot("a").pid
        assert pid is not None
        d.send(ProcessExited("a", pid, 137))
    elif change == "shutdown":
        d.send(BeginShutdown())
    else:
        d.answer(Reload(make_config(models=1).model_copy(update={"models": {}})))
    assert d.shelves["a"] == []
    assert d.state("a") is not ModelState.READY or change == "reload_removes"


def test_a_new_process_gets_new_grants() -> None:
    d = Driver(make_config(util=0.4), standing=STAND)
    ready(d)
    old = pid = d.slot("a").pid
    assert pid is not None
    d.send(ProcessExited("a", pid, 137))
    assert d.shelves["a"] == []
    d.finish("a")  # the orphans of the dead root are stopped
    d.now = 5.0  # past the restart backoff
    d.submit(2, "a")
    d.finish("a")
    assert d.state("a") is ModelState.READY
    assert d.slot("a").pid != old
    assert {g.pid for g in d.shelves["a"]} == {d.slot("a").pid}


def test_releases_may_wait_only_while_nothing_waits_on_one() -> None:
    d = Driver(make_config(), standing=STAND)
    ready(d)
    assert d.core.releases_can_wait  # one ready model, nothing queued
    d.submit(2, "a")
    d.submit(3, "b")  # b is queued behind a's lease: a drains for it
    assert not d.core.releases_can_wait
    d.release(2)
    d.finish("a")
    d.finish("b")
    d.release(3)
    assert d.core.releases_can_wait
    d.send(BeginShutdown())
    assert not d.core.releases_can_wait


def test_a_quiet_release_reaches_the_idle_timer_as_of_when_it_happened() -> None:
    config = make_config()
    models = dict(config.models)
    models["a"] = models["a"].model_copy(update={"ttl_secs": 30})
    d = Driver(config.model_copy(update={"models": models}), standing=STAND)
    ready(d)
    grant = d.take("a")
    d.now = 10.0
    d.release_quietly(grant.ticket)
    d.now = 10.02  # the runner's next step, a sync bound later
    d.tick()
    assert d.core.next_deadline() == 40.0


def test_without_standing_grants_nothing_is_stocked() -> None:
    d = Driver(make_config())
    ready(d)
    assert not [c for c in d.log if isinstance(c, Stock)]
    assert d.granted == [1]
    assert all(isinstance(c, Grant) for c in d.log if isinstance(c, Grant))


def test_a_reload_that_lowers_the_cap_restocks_within_it_without_a_restart() -> None:
    d = Driver(make_config(), standing=STAND)
    ready(d)
    pid = d.slot("a").pid
    held = d.take("a")
    reply = d.answer(Reload(capped(2)))
    assert reply.data["retuned"] == ["a", "b"]
    assert d.slot("a").pid == pid  # same process
    assert d.slot("a").leases == {held.ticket}
    assert len(d.shelves["a"]) == 1  # the lease in flight and one standing: the new cap
    assert stocks(d, "a")[-1].replace


def test_a_busy_model_s_stock_grows_and_starts_small_again_after_a_withdrawal() -> None:
    """A model that just woke costs a few grants made (and withdrawn, if it leaves again);
    one whose grants go fast between two steps gets twice as many, up to the setting."""
    d = Driver(make_config(), standing=16)
    ready(d)
    assert len(d.shelves["a"]) == FIRST_STOCK
    sizes = []
    for _ in range(4):
        for _ in range(len(d.shelves["a"])):  # every grant standing is taken before a step
            d.take("a")
        d.tick()
        sizes.append(len(d.shelves["a"]))
    assert sizes == [8, 16, 16, 16]
    d.take("a")
    d.tick()
    assert len(d.shelves["a"]) == 16  # one of 16 taken: it stays as it is
    d.answer(AdminEvict("a"))
    for ticket in list(d.slot("a").leases):
        d.release(ticket)
    d.finish("a")
    d.submit(2, "a")
    d.finish("a")
    assert len(d.shelves["a"]) == FIRST_STOCK
