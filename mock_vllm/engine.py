"""The fake engine: request admission, token pacing, and vLLM's sleep state machine.

Owns: which requests wait and run, when tokens come out, the asleep tags and weight
validity, sleep/wake/reload transitions (serialised, like vLLM's engine core), the
chunk faults, and the event record.
Does not: speak HTTP (routes do) or touch the ledger directly (`GpuMemory` does), nor
real CUDA memory (a `Device`, only with ``--mock-gpu torch``, which then also answers
the first token of every generation with the checksum of the weights on the GPU).

vLLM semantics kept here: requests that arrive while asleep queue and run once fully
awake; level 1 keeps weights (in host RAM), level 2 discards them so that, after a wake
without ``reload_weights``, generation "works" but yields garbage; ``mode`` decides what
happens to in-flight requests (abort them, wait for them, or freeze them until wake).

cuda-checkpoint: while any rank is locked or checkpointed (``cuda_running`` cleared by
the server's ledger watcher), every CUDA call of a real vLLM blocks — so tokens stop,
and sleep/wake/reload wait — until the ranks run again. Nothing fails; it stalls.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mock_vllm import textgen
from mock_vllm.device import DeviceMemory
from mock_vllm.errors import ApiError
from mock_vllm.faults import Faults
from mock_vllm.gpu_memory import CudaSuspended, Footprint, GpuMemory, GpuMemoryError
from mock_vllm.metrics import Stats
from mock_vllm.options import ServeOptions

TAGS = ("weights", "kv_cache", "scheduling")
#: How soon a memory change blocked by a suspended rank is tried again.
CUDA_RETRY_SECS = 0.05
MEMORY_TAGS = frozenset({"weights", "kv_cache"})
SLEEP_MODES = ("abort", "wait", "keep")


class EventLog:
    """What happened, in order, for tests to assert on (``GET /mock/events``)."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self._events: deque[dict[str, object]] = deque(maxlen=maxlen)

    def record(self, event: str, **fields: object) -> None:
        self._events.append({"t": time.monotonic(), "event": event, **fields})

    def snapshot(self) -> list[dict[str, object]]:
        return list(self._events)


@dataclass(eq=False)
class Request:
    request_id: str
    path: str
    stream: bool
    arrived: float = field(default_factory=time.monotonic)
    state: str = "waiting"
    aborted: asyncio.Event = field(default_factory=asyncio.Event)
    finish_reason: str | None = None
    client_gone: bool = False


async def wait_any(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Return when any event is set or ``timeout`` passes; leaves no task behind."""
    tasks = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


T = TypeVar("T")


def _forget(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        # Retrieve the outcome so an abandoned failure is not reported as never retrieved.
        if not task.cancelled():
            task.exception()

    return done


class Engine:
    """One model's engine state; every mutation happens on the event loop."""

    def __init__(
        self,
        opts: ServeOptions,
        gpu: GpuMemory,
        crash: Callable[[], None],
        device: DeviceMemory | None = None,
    ) -> None:
        self.opts = opts
        self.faults: Faults = opts.faults
        self.gpu = gpu
        self.device = device
        self.crash = crash
        self.events = EventLog()
        self.stats = Stats()
        self.requests: set[Request] = set()
        self.asleep: set[str] = set()
        self.weights_valid = True
        self.weights_offloaded = False
        self.dead = False
        self._admit = asyncio.Event()  # new requests may start
        self._run = asyncio.Event()  # admitted requests may make progress
        self._idle = asyncio.Event()  # nothing is running
        self._closing = asyncio.Event()
        self.cuda_running = asyncio.Event()  # no rank is locked/checkpointed
        for ev in (self._admit, self._run, self._idle, self.cuda_running):
            ev.set()
        self._transition = asyncio.Lock()
        self._detached: set[asyncio.Task[Any]] = set()

    async def detached(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a transition to the end even if its HTTP caller disconnects: vLLM's engine
        does not stop a sleep halfway because a client hung up."""
        task = asyncio.ensure_future(coro)
        self._detached.add(task)
        task.add_done_callback(_forget(self._detached))
        return await asyncio.shield(task)

    # --- requests -----------------------------------------------------------------
    def new_request(self, request_id: str, path: str, stream: bool) -> Request:
        req = Request(request_id, path, stream)
        if self._closing.is_set():
            req.aborted.set()  # shutting down: nothing new starts
        self.requests.add(req)
        self.events.record("request", path=path, request_id=request_id, stream=stream)
        return req

    def check_alive(self) -> None:
        if self.dead:
            raise ApiError(500, "EngineCore encountered an issue. See stack trace above.")

    def mark_dead(self) -> None:
        """A worker died: fail everything in flight, as vLLM's EngineDeadError does."""
        self.dead = True
        self.abort_all(running_only=False)

    def set_cuda_running(self, running: bool) -> None:
        """The ledger watcher saw the ranks' CUDA state change."""
        if running == self.cuda_running.is_set():
            return
        if running:
            self.cuda_running.set()
        else:
            self.cuda_running.clear()
        self.events.record("cuda_resumed" if running else "cuda_suspended")

    async def _apply_memory(self, fp: Footprint) -> None:
        """Rebook the ranks, waiting (like a blocked CUDA call) while any is suspended."""
        while True:
            await self.cuda_running.wait()
            try:
                self.gpu.apply(fp)
                break
            except CudaSuspended:
                # Suspended after the watcher last looked; it will notice soon.
                await asyncio.sleep(CUDA_RETRY_SECS)
        if self.device is not None:
            await self.device.apply(fp)

    def count(self, state: str) -> int:
        return sum(1 for r in self.requests if r.state == state)

    async def admit(
        self, req: Request, on_wait: Callable[[], Awaitable[None]] | None = None, every: float = 0.0
    ) -> bool:
        """Queue until the scheduler runs ``req``; False if it was aborted meanwhile."""
        self.check_alive()
        while not self._admit.is_set() and not req.aborted.is_set():
            await wait_any(self._admit, req.aborted, timeout=every if on_wait else None)
            if on_wait is not None and not self._admit.is_set():
                await on_wait()
        if req.aborted.is_set():
            return False
        req.state = "running"
        self._idle.clear()
        return True

    def client_abort(self, req: Request) -> None:
        """The client went away mid-request (vLLM then aborts the request)."""
        if not req.client_gone and not self._closing.is_set():
            req.client_gone = True
            req.finish_reason = "abort"
            self.events.record("client_abort", request_id=req.request_id, path=req.path)

    def finish(self, req: Request) -> None:
        req.state = "done"
        self.requests.discard(req)
        if req.finish_reason is not None:
            self.stats.finished[req.finish_reason] += 1
        self.events.record(
            "request_done",
            request_id=req.request_id,
            path=req.path,
            finish_reason=req.finish_reason,
        )
        if self.count("running") == 0:
            self._idle.set()

    async def generate(
        self,
        req: Request,
        prompt: str,
        max_tokens: int,
        on_token: Callable[[str], Awaitable[None]],
        adapter: str | None = None,
    ) -> bool:
        """Emit up to ``max_tokens`` tokens at the configured pace; False if aborted.

        With a LoRA ``adapter`` the first token is ``[lora NAME]`` and the rest are
        seeded by the adapter's name, so tests can tell which one answered."""
        self.stats.prompt_tokens += textgen.count_tokens(prompt)
        for i in range(max_tokens):
            delay = self.opts.ttft_ms / 1000 if i == 0 else 1 / self.opts.tokens_per_sec
            await wait_any(req.aborted, timeout=delay)
            # A suspended rank blocks the forward pass until cuda-checkpoint resumes it.
            if not self.cuda_running.is_set() and not req.aborted.is_set():
                self.events.record("cuda_stall", request_id=req.request_id)
                await wait_any(self.cuda_running, req.aborted)
            # A keep-mode sleep freezes running requests here until the wake.
            if not self._run.is_set() and not req.aborted.is_set():
                await wait_any(self._run, req.aborted)
            if req.aborted.is_set():
                return False
            if i == 0:
                self.stats.ttft.observe(time.monotonic() - req.arrived)
            self.stats.generation_tokens += 1
            piece = textgen.token(adapter or self.opts.model_id, prompt, i)
            if not self.weights_valid:
                piece = textgen.GARBAGE_TOKEN
            if i == 0 and adapter is not None:
                piece = f"[lora {adapter}]"
            if i == 0 and self.device is not None:
                piece = f"[weights {await self.device.checksum()}]"
            await on_token(piece)
        return True

    async def after_chunk(self, sent: int) -> None:
        """Apply the chunk faults once ``sent`` chunks of a response are out."""
        crash_at, hang_at = self.faults.crash_after_chunks, self.faults.hang_after_chunks
        if crash_at is not None and sent >= crash_at:
            self.crash()
        if hang_at is not None and sent >= hang_at:
            await self._closing.wait()

    def abort_all(self, *, running_only: bool) -> None:
        for req in list(self.requests):
            if req.state == "running" or not running_only:
                req.aborted.set()

    def begin_shutdown(self) -> None:
        self.abort_all(running_only=False)
        self._closing.set()

    # --- sleep / wake -------------------------------------------------------------
    def sleep_state(self) -> str:
        if not self.asleep & MEMORY_TAGS:
            return "awake"
        return "weights_offloaded" if self.weights_offloaded else "discard_all"

    def _footprint(self, asleep: set[str], offloaded: bool) -> Footprint:
        return Footprint("weights" not in asleep, "kv_cache" not in asleep, offloaded)

    async def sleep(self, level: int, mode: str) -> None:
        self.events.record("sleep", level=level, mode=mode)
        if not self.opts.enable_sleep_mode:
            raise ApiError(500, "Sleep mode is not enabled. Start with --enable-sleep-mode.")
        if self.faults.fail_sleep:
            raise ApiError(500, "mock fault: sleep failed (fail_sleep)")
        async with self._transition:
            self._admit.clear()
            if mode == "abort":
                self.abort_all(running_only=True)
            elif mode == "wait":
                await self._idle.wait()
            self._run.clear()
            if level == 0:
                self.asleep.add("scheduling")
            else:
                await asyncio.sleep(self.opts.sleep_delay + self.faults.sleep_delay_secs)
                if level == 2:
                    self.weights_valid = False
                    self.weights_offloaded = False
                elif "weights" not in self.asleep:
                    self.weights_offloaded = True
                self.asleep.update(TAGS)
                await self._apply_memory(self._footprint(self.asleep, self.weights_offloaded))
        self.events.record("sleep_done", level=level, mode=mode)

    async def wake(self, tags: list[str] | None) -> str:
        """Wake ``tags`` (None = all); returns "awake" or "sleeping" (partial wake)."""
        self.events.record("wake_up", tags=tags)
        if self.faults.fail_wake:
            raise ApiError(500, "mock fault: wake_up failed (fail_wake)")
        async with self._transition:
            asleep = self.asleep - set(tags or TAGS)
            offloaded = self.weights_offloaded and "weights" in asleep
            if (self.asleep - asleep) & MEMORY_TAGS:
                try:
                    await self._apply_memory(self._footprint(asleep, offloaded))
                except GpuMemoryError as exc:
                    raise ApiError(500, str(exc)) from None
                await asyncio.sleep(self.opts.wake_delay + self.faults.wake_delay_secs)
            # vLLM resumes scheduling once all memory is back, even if the caller woke the
            # tags one at a time (the level-2 protocol: weights, reload, kv_cache).
            if not asleep & MEMORY_TAGS:
                asleep.discard("scheduling")
            self.asleep, self.weights_offloaded = asleep, offloaded
            if not self.asleep:
                self._run.set()
                self._admit.set()
        self.events.record("wake_up_done", tags=tags, asleep=sorted(self.asleep))
        return "sleeping" if self.asleep else "awake"

    async def collective_rpc(self, method: str) -> list[None]:
        self.events.record("collective_rpc", method=method)
        if method == "reload_weights":
            async with self._transition:
                if "weights" in self.asleep:
                    raise ApiError(500, "Cannot reload weights while they are asleep.")
                await self.cuda_running.wait()
                if self.device is not None:
                    await self.device.reload_weights()
                await asyncio.sleep(self.opts.reload_delay)
                self.weights_valid = True
        return [None] * self.opts.tensor_parallel_size

    def reset_prefix_cache(self) -> bool:
        self.events.record("reset_prefix_cache")
        return True
