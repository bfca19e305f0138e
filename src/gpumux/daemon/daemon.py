"""Runs the daemon: start-up, serving and shutdown, as separate steps over built components.

Owns: the order of the run — build every part (`components`), start the background
tasks, bind the listeners (proxy, metrics, admin), install signal handlers, become
SERVING and tell systemd READY; wait for a stop request; then STOPPING, and a drain kept
alive with EXTEND_TIMEOUT (stop accepting → fail queues → drain in-flight within
`shutdown_timeout_secs` → stop every tree); finally release everything and exit 0.
Does not: build a part (`components` does) or contain decisions; everything here is
order.
"""

from __future__ import annotations

import asyncio
import gc
import signal

import structlog
import uvloop
from aiohttp import web

from gpumux.core.config import Config
from gpumux.core.states import DaemonState
from gpumux.daemon.components import Components, ServeOptions, build_components
from gpumux.daemon.lifecycle import DaemonLifecycle
from gpumux.daemon.sdnotify import extend_timeout, watchdog
from gpumux.http.listener import BareHandler, listen
from gpumux.telemetry.metrics import measure_loop_lag

log = structlog.get_logger(__name__)

LOOP_LAG_INTERVAL_SECS = 0.5
#: Allocations between young-generation collections (CPython's default is 700). A
#: proxied request allocates a few thousand objects that die with it; at 700 the
#: collector ran several times per request, scanning every live request's objects each
#: time (about 5 % of the proxy's CPU under load, py-spy).
GC_YOUNG_THRESHOLD = 20_000


class Daemon:
    def __init__(self, config: Config, options: ServeOptions) -> None:
        self.config = config
        self.options = options
        self.lifecycle = DaemonLifecycle()
        self._runners: list[web.BaseRunner] = []

    async def run(self) -> int:
        parts = await build_components(self.config, self.options, self.lifecycle)
        try:
            async with asyncio.TaskGroup() as tasks:
                await self._start(parts, tasks)
                await self.lifecycle.stop_requested()
                await self._shutdown(parts)
                raise _Finished  # leaves the task group, cancelling the background tasks
        except* _Finished:
            pass
        finally:
            await self._release(parts)
        self.lifecycle.transition(DaemonState.STOPPED)
        log.info("daemon_stopped")
        return 0

    # ---- start-up -----------------------------------------------------------------------

    async def _start(self, parts: Components, tasks: asyncio.TaskGroup) -> None:
        """Background tasks, then listeners, then signals; READY once every port is bound."""
        self._start_background(parts, tasks)
        await self._bind_listeners(parts)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.lifecycle.request_stop)
        loop.add_signal_handler(signal.SIGHUP, parts.reloader.request)
        self.lifecycle.transition(DaemonState.SERVING)
        ports = parts.ports
        log.info(
            "daemon_ready",
            port=ports.proxy,
            metrics_port=ports.metrics,
            admin_port=ports.admin,
            models=list(self.config.models),
        )
        # Listeners are bound; models load on demand, so this never waits for one.
        parts.notifier.ready(f"serving {len(self.config.models)} models on port {ports.proxy}")

    def _start_background(self, parts: Components, tasks: asyncio.TaskGroup) -> None:
        config = self.config
        tasks.create_task(parts.scheduler.run(), name="scheduler")
        if parts.checkpoints is not None:
            tasks.create_task(parts.checkpoints.housekeeping(), name="images")
        tasks.create_task(measure_loop_lag(parts.metrics, LOOP_LAG_INTERVAL_SECS), name="loop-lag")
        tasks.create_task(
            parts.resources.poll(config.host_memory.check_interval_secs), name="memory-poll"
        )
        tasks.create_task(parts.reloader.run(), name="config-reload")
        tasks.create_task(watchdog(parts.notifier), name="sd-watchdog")
        tasks.create_task(parts.health.run(), name="health")

    async def _bind_listeners(self, parts: Components) -> None:
        config, ports = self.config, parts.ports
        await self._listen(
            parts.proxy.front_door(), config.host, ports.proxy, cancel_on_disconnect=True
        )
        if ports.metrics:
            await self._listen(parts.metrics_app(), config.host, ports.metrics)
        if parts.admin is not None and ports.admin is not None:
            await self._listen(
                parts.admin.app(), config.admin_host, ports.admin, cancel_on_disconnect=True
            )
        if config.agent_port is not None:  # answers `maint` until the daemon is SERVING
            await parts.agent.start()

    async def _listen(
        self,
        app: web.Application | BareHandler,
        host: str,
        port: int,
        *,
        cancel_on_disconnect: bool = False,
    ) -> None:
        # Every listener gets the same request-head deadline (slowloris, case 8).
        runner = await listen(
            app,
            host,
            port,
            header_timeout_secs=self.config.header_timeout_secs,
            cancel_on_disconnect=cancel_on_disconnect,
        )
        self._runners.append(runner)

    # ---- shutdown -----------------------------------------------------------------------

    async def _shutdown(self, parts: Components) -> None:
        """STOPPING, then the drain, with systemd's stop timeout pushed out while it runs."""
        parts.notifier.stopping()
        async with extend_timeout(parts.notifier):
            await self._drain(parts)

    async def _drain(self, parts: Components) -> None:
        self.lifecycle.transition(DaemonState.DRAINING)
        log.info("daemon_stopping")
        scheduler = parts.scheduler
        scheduler.begin_shutdown()
        deadline = self.config.supervision.shutdown_timeout_secs
        try:
            async with asyncio.timeout(deadline):
                await scheduler.wait_idle()
        except TimeoutError:
            log.warning("shutdown_drain_timed_out", timeout_s=deadline)
            scheduler.force_stop()
        try:
            async with asyncio.timeout(deadline):
                await scheduler.wait_stopped()
        except TimeoutError:
            log.warning("shutdown_stop_timed_out", timeout_s=deadline)
        await parts.backends.close()

    async def _release(self, parts: Components) -> None:
        """Listeners first (the admin's event streams ended, so its cleanup is quick), then
        every part in reverse order of building."""
        if parts.admin is not None:
            parts.admin.close()
        for runner in reversed(self._runners):
            await runner.cleanup()
        await parts.close()


class _Finished(Exception):
    """Leaves the task group once shutdown is complete (cancels the background tasks)."""


def serve(config: Config, options: ServeOptions) -> int:
    # uvloop for gpumux's own loop only: libuv does in C the socket and callback work that
    # is most of the proxy's CPU per streamed request (bench/compare.py). Backends are
    # separate processes with their own loops, and CRIU never dumps gpumux. Its
    # loop.time() has millisecond resolution: every duration gpumux takes from it spans
    # awaits and is reported in milliseconds or coarser.
    quiet_collector()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(Daemon(config, options).run())


def quiet_collector() -> None:
    """Fewer, cheaper cyclic-garbage collections for the daemon's life: what is loaded at
    start-up (modules, config, the imported libraries: nearly all long-lived objects) is
    frozen out of every later collection, and young collections run less often. Memory
    that cycles hold is still reclaimed, later and in larger batches."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
