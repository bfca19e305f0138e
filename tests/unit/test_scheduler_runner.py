"""The scheduler runner's races, on a real asyncio loop, in process.

The real runner, core, policy and orchestrator run over `RecordingEffects` (steps take no
time and can be held at a gate), with a `ManualClock` that never moves, so no deadline
fires during a test and every outcome follows from the order of messages alone.
Clients use only the request API the proxy uses (`acquire` a lease, `release` it) and
the shutdown calls the daemon uses; what the scheduler did is read from the effects'
records and from what it tells its observer. No process is started.

Covered: a client that leaves while queued, at the moment it is granted, or mid-stream;
a lease released twice (the second is harmless and nothing is counted twice); the
awaiting task cancelled before the scheduler saw its request; a failed wake seen by
requesters; shutdown with requests queued; and the runner itself being stopped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from gpumux.core.config import GIB, Config
from gpumux.core.errors import ModelUnavailable, ShuttingDown
from gpumux.core.eviction import Step
from gpumux.core.states import ModelState
from gpumux.policy.registry import make_policy
from gpumux.scheduler.orchestrator import Orchestrator
from gpumux.scheduler.runner import Lease, Scheduler
from gpumux.scheduler.state.core import SchedulerCore
from tests.support.fakes import (
    KILL,
    ManualClock,
    RecordingEffects,
    RecordingObserver,
    no_subprocess,
)

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures(no_subprocess.__name__)]

#: Bound on any wait for the scheduler to catch up (it needs microseconds).
SETTLE_SECS = 2.0


def make_config(*, standing: int = 16, sync_ms: float = 20, **supervision: Any) -> Config:
    """Two models that cannot be awake together (0.9 of one GPU each); `standing` grants
    per ready model, reported within `sync_ms` (the daemon's defaults)."""
    return Config.model_validate(
        {
            "models": {
                alias: {
                    "model_path": f"m/{alias}",
                    "port": 8100 + i,
                    "extra_args": ["--gpu-memory-utilization", "0.9"],
                    "eviction": {"weights": "offload", "process": "keep_running"},
                }
                for i, alias in enumerate("ab")
            },
            "policy": {
                "policy_type": "fifo",  # the runner's mechanics under the simplest policy
                "min_active_secs": 0,
                "coalesce_window_ms": 0,
                "min_quantum_ms": 0,
                "standing_grants": standing,
                "lease_sync_ms": sync_ms,
            },
            "gpu": {"probe": "fake", "fake_capacity_gib": [80]},
            "supervision": supervision,
        }
    )


class Harness:
    """A running scheduler over recording effects, and what it told its observer."""

    def __init__(self, config: Config) -> None:
        self.clock = ManualClock()
        self.effects = RecordingEffects(self.clock)
        self.observer = RecordingObserver()
        # The one place that knows how the scheduler is assembled.
        policy = config.policy
        core = SchedulerCore(
            config, make_policy(policy), {0: 80 * GIB}, standing_grants=policy.standing_grants
        )
        orchestrator = Orchestrator(self.effects, self.clock)
        self.scheduler = Scheduler(
            core,
            orchestrator,
            self.observer,
            self.clock,
            lease_sync_secs=policy.lease_sync_ms / 1000,
        )

    def state(self, model: str) -> ModelState | None:
        """The model's state as last reported (None: never changed)."""
        changes = [s.after for s in self.observer.states if s.model == model]
        return changes[-1] if changes else None

    def inflight(self, model: str) -> int:
        return self.observer.inflight.get(model, 0)

    def queued(self, model: str) -> int:
        return self.observer.depths.get(model, 0)

    def client(self, model: str, leaving: asyncio.Event) -> asyncio.Task[None]:
        """A client that streams from `model` until `leaving` is set or it is cancelled,
        releasing its lease on the way out as the proxy does."""

        async def stream() -> None:
            lease = await self.scheduler.acquire(model)
            try:
                await leaving.wait()
            finally:
                self.scheduler.release(lease)

        return asyncio.create_task(stream())


@asynccontextmanager
async def running(config: Config | None = None) -> AsyncIterator[Harness]:
    harness = Harness(config or make_config())
    task = asyncio.create_task(harness.scheduler.run())
    try:
        yield harness
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until(h: Harness, condition: Callable[[], bool]) -> None:
    """Wait (bounded) until what the scheduler reported makes `condition` hold."""
    async with asyncio.timeout(SETTLE_SECS):
        await h.observer.until(condition)


def nudge(h: Harness) -> None:
    """Send the scheduler an input that changes nothing (plenty of host memory): it hands
    over what requests did unasked first, whatever its sync timer says."""
    h.scheduler.report_host_memory(1024 * GIB)


async def ready(h: Harness, model: str) -> None:
    """Bring `model` up with one request, and release that lease."""
    h.scheduler.release(await h.scheduler.acquire(model))
    nudge(h)
    await until(h, lambda: h.inflight(model) == 0)


async def settled(h: Harness, model: str, leases: int) -> None:
    """Round-trip a probe lease on the ready `model`, then wait for `leases` to be held.

    The scheduler handles its messages in order, so once the probe's release is handled
    so is everything sent before it, and whatever those sent in turn: a count that
    matches then is final, not a moment on the way.
    """
    h.scheduler.release(await asyncio.wait_for(h.scheduler.acquire(model), SETTLE_SECS))
    await until(h, lambda: h.inflight(model) == leases)


async def test_a_request_cold_starts_its_model_and_its_lease_is_counted_until_released() -> None:
    async with running() as h:
        lease = await h.scheduler.acquire("a")
        assert lease.model == "a"
        assert h.effects.steps("a") == [Step.COLD_START]
        assert h.inflight("a") == 1
        h.scheduler.release(lease)
        await asyncio.wait_for(h.scheduler.wait_idle(), SETTLE_SECS)
        assert h.inflight("a") == 0


async def test_a_client_that_leaves_while_queued_holds_nothing_and_the_wake_goes_on() -> None:
    async with running() as h:
        gate = h.effects.hold("a", Step.COLD_START)
        waiting = asyncio.create_task(h.scheduler.acquire("a"))
        await gate.entered.wait()
        assert h.queued("a") == 1
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await until(h, lambda: h.queued("a") == 0)
        gate.open()
        await until(h, lambda: h.state("a") is ModelState.READY)
        assert h.inflight("a") == 0  # nobody was granted a lease for the gone client
        lease = await h.scheduler.acquire("a")  # the model is up for the next one
        assert h.effects.steps("a") == [Step.COLD_START]
        h.scheduler.release(lease)


#: The asking path: a ready model with grants standing would answer without asking.
ASKING = make_config(standing=0)


async def test_a_client_that_leaves_the_moment_it_is_granted_does_not_keep_the_lease() -> None:
    async with running(ASKING) as h:
        await ready(h, "a")
        requester: asyncio.Task[Lease] | None = None

        def leave_on_grant() -> None:
            # Runs in the scheduler task right after the grant, before the requester
            # resumes: the client is cancelled in exactly that gap.
            if requester is not None and h.inflight("a") == 1 and not requester.done():
                requester.cancel()

        h.observer.on_queues = leave_on_grant
        requester = asyncio.create_task(h.scheduler.acquire("a"))
        with pytest.raises(asyncio.CancelledError):
            await requester
        await until(h, lambda: h.inflight("a") == 0)
        h.observer.on_queues = None
        # Nothing holds `a`: a request for `b` switches without waiting out a drain.
        lease = await asyncio.wait_for(h.scheduler.acquire("b"), SETTLE_SECS)
        assert h.effects.steps("a") == [Step.COLD_START, Step.SLEEP_OFFLOAD]
        h.scheduler.release(lease)


async def test_a_client_that_leaves_mid_stream_releases_and_lets_the_switch_proceed() -> None:
    async with running() as h:
        leaving = asyncio.Event()
        streaming = h.client("a", leaving)
        await until(h, lambda: h.inflight("a") == 1)
        wanting_b = asyncio.create_task(h.scheduler.acquire("b"))
        await until(h, lambda: h.state("a") is ModelState.DRAINING)
        assert h.effects.steps("a") == [Step.COLD_START]  # its stream holds the eviction
        assert not wanting_b.done()
        streaming.cancel()  # the client disconnects mid-response
        await asyncio.gather(streaming, return_exceptions=True)
        lease = await asyncio.wait_for(wanting_b, SETTLE_SECS)
        assert h.effects.steps("a") == [Step.COLD_START, Step.SLEEP_OFFLOAD]
        assert h.effects.steps("b") == [Step.COLD_START]
        assert h.inflight("a") == 0
        h.scheduler.release(lease)


async def test_a_lease_released_twice_is_released_once() -> None:
    async with running() as h:
        first = await h.scheduler.acquire("a")
        second = await h.scheduler.acquire("a")
        await until(h, lambda: h.inflight("a") == 2)
        h.scheduler.release(first)
        h.scheduler.release(first)  # a second release of the same lease is harmless...
        await settled(h, "a", leases=1)  # ...and does not count against the other lease
        h.scheduler.release(second)
        await asyncio.wait_for(h.scheduler.wait_idle(), SETTLE_SECS)
        assert h.inflight("a") == 0


async def test_a_requester_cancelled_before_the_scheduler_saw_it_leaks_no_lease() -> None:
    async with running(ASKING) as h:
        await ready(h, "a")
        holder = asyncio.Event()
        other = h.client("a", holder)
        await until(h, lambda: h.inflight("a") == 1)
        requester = asyncio.create_task(h.scheduler.acquire("a"))
        await asyncio.sleep(0)  # it has asked; the scheduler has not answered yet
        requester.cancel()
        with pytest.raises(asyncio.CancelledError):
            await requester
        # The grant found nobody waiting (its lease is handed back) and the cancel
        # arrived too: the ticket is released once, the other client's lease stays.
        await settled(h, "a", leases=1)
        holder.set()
        await other
        await asyncio.wait_for(h.scheduler.wait_idle(), SETTLE_SECS)


async def test_a_wake_that_fell_back_to_a_cold_start_still_serves_its_requests() -> None:
    async with running() as h:
        await ready(h, "a")
        await ready(h, "b")  # `a` is asleep now
        h.effects.fail("a", Step.WAKE_ALL, "wake_up answered 500")
        lease = await asyncio.wait_for(h.scheduler.acquire("a"), SETTLE_SECS)
        fallback = [Step.SLEEP_OFFLOAD, Step.WAKE_ALL, KILL, Step.COLD_START]
        assert h.effects.steps("a")[-4:] == fallback
        assert [r.reason for r in h.observer.restarts] == ["wake_failed"]
        h.scheduler.release(lease)


async def test_requesters_of_a_model_that_cannot_start_get_an_error_not_a_hang() -> None:
    async with running(make_config(max_start_failures=1)) as h:
        h.effects.fail("a", Step.COLD_START, "exited with code 1 during start")
        requests = [asyncio.create_task(h.scheduler.acquire("a")) for _ in range(3)]
        results = await asyncio.wait_for(
            asyncio.gather(*requests, return_exceptions=True), SETTLE_SECS
        )
        assert all(isinstance(r, ModelUnavailable) for r in results), results
        assert h.state("a") is ModelState.FAILED
        assert h.inflight("a") == 0


async def test_shutdown_fails_queued_requests_refuses_new_ones_and_stops_every_tree() -> None:
    async with running() as h:
        gate = h.effects.hold("a", Step.COLD_START)
        queued = [asyncio.create_task(h.scheduler.acquire("a")) for _ in range(2)]
        await gate.entered.wait()
        await until(h, lambda: h.queued("a") == 2)
        h.scheduler.begin_shutdown()
        results = await asyncio.wait_for(
            asyncio.gather(*queued, return_exceptions=True), SETTLE_SECS
        )
        assert all(isinstance(r, ShuttingDown) for r in results), results
        with pytest.raises(ShuttingDown):
            await h.scheduler.acquire("b")
        gate.open()  # the start under way finishes, then the tree is stopped
        await asyncio.wait_for(h.scheduler.wait_stopped(), SETTLE_SECS)
        assert h.effects.steps("a") == [Step.COLD_START, Step.STOP]
        assert h.effects.pid_of("a") is None
        assert h.effects.steps("b") == []


async def test_stopping_the_runner_cancels_the_operations_under_way() -> None:
    h = Harness(make_config())
    runner = asyncio.create_task(h.scheduler.run())
    gate = h.effects.hold("a", Step.COLD_START)
    waiting = asyncio.create_task(h.scheduler.acquire("a"))
    await gate.entered.wait()
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    assert gate.cancelled  # the step itself saw the cancellation
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)


# ---- standing grants: what a request does without asking (state/standing.py) ----------

#: Only other inputs tell the scheduler what requests did unasked: its timer is an hour.
QUIET = make_config(sync_ms=3_600_000)


async def test_a_request_to_a_ready_model_takes_a_standing_grant_without_asking() -> None:
    async with running(QUIET) as h:
        await ready(h, "a")
        waits = len(h.observer.waits)
        lease = await h.scheduler.acquire("a")
        assert lease.ticket < 0  # one the scheduler granted ahead
        assert (lease.model, lease.port) == ("a", 8100)
        assert h.inflight("a") == 0  # the scheduler task has not run since
        assert len(h.observer.waits) == waits
        nudge(h)
        await until(h, lambda: h.inflight("a") == 1)
        assert h.observer.waits[-1].wait_secs == 0.0
        h.scheduler.release(lease)


async def test_the_scheduler_hears_of_a_taken_grant_within_the_sync_bound() -> None:
    async with running() as h:  # 20 ms, the default
        await ready(h, "a")
        lease = await h.scheduler.acquire("a")
        assert lease.ticket < 0
        await until(h, lambda: h.inflight("a") == 1)  # with no other input at all
        h.scheduler.release(lease)
        await until(h, lambda: h.inflight("a") == 0)


async def test_a_switch_waits_for_a_stream_on_a_standing_grant_and_its_release_is_prompt() -> None:
    """The claim reaches the scheduler before the request for `b` does, so `a` drains
    around the stream rather than being evicted under it; the stream's release, with a
    drain waiting on it, wakes the scheduler at once (its timer here is an hour)."""
    async with running(QUIET) as h:
        await ready(h, "a")
        leaving = asyncio.Event()
        streaming = h.client("a", leaving)
        await asyncio.sleep(0)  # it took a grant
        wanting_b = asyncio.create_task(h.scheduler.acquire("b"))
        await until(h, lambda: h.state("a") is ModelState.DRAINING)
        assert h.inflight("a") == 1
        assert h.effects.steps("a") == [Step.COLD_START]
        late = asyncio.create_task(h.scheduler.acquire("a"))
        await asyncio.sleep(0)
        assert not late.done()  # the grants were withdrawn with the drain: it asks, and waits
        late.cancel()
        await asyncio.gather(late, return_exceptions=True)
        leaving.set()
        await streaming
        lease = await asyncio.wait_for(wanting_b, SETTLE_SECS)
        assert h.effects.steps("a") == [Step.COLD_START, Step.SLEEP_OFFLOAD]
        h.scheduler.release(lease)


async def test_shutdown_waits_for_a_lease_the_scheduler_has_not_heard_of() -> None:
    async with running(QUIET) as h:
        await ready(h, "a")
        lease = await h.scheduler.acquire("a")
        assert lease.ticket < 0
        h.scheduler.begin_shutdown()
        idle = asyncio.create_task(h.scheduler.wait_idle())
        await until(h, lambda: h.inflight("a") == 1)  # BeginShutdown handed the claim over
        assert not idle.done()
        h.scheduler.release(lease)
        await asyncio.wait_for(idle, SETTLE_SECS)
        assert h.inflight("a") == 0


async def test_settle_brings_the_view_up_to_date_with_what_requests_did_unasked() -> None:
    """What the status page awaits: no lag of even the sync bound (an hour here)."""
    async with running(QUIET) as h:
        await ready(h, "a")
        await h.scheduler.settle()  # nothing pending: returns at once
        lease = await h.scheduler.acquire("a")
        assert h.scheduler.view.models["a"].inflight == 0
        await asyncio.wait_for(h.scheduler.settle(), SETTLE_SECS)
        assert h.scheduler.view.models["a"].inflight == 1
        h.scheduler.release(lease)  # quiet: nothing waits on it
        assert h.scheduler.view.models["a"].inflight == 1
        await asyncio.wait_for(h.scheduler.settle(), SETTLE_SECS)
        assert h.scheduler.view.models["a"].inflight == 0
