"""The composition root: builds every component from the config and runs them in order.

Owns: start-up order (sweep leftovers → subreaper → reaper → ledger/probe → scheduler →
listeners), the background tasks, signal handling, and the shutdown sequence (stop
accepting → fail queues → drain in-flight within `shutdown_timeout_secs` → stop every
tree → exit 0).
Does not: contain decisions; everything here is wiring.
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web

from gpumux.admin.api import AdminApi
from gpumux.admin.auth import AdminToken
from gpumux.admin.node import NodeSources, epp_snapshot, read_node_status
from gpumux.admin.setup import admin_port, build_admin, proxy_url
from gpumux.backends.effects import Backends
from gpumux.backends.upstream import UpstreamPools
from gpumux.checkpoint.s3.auth import check_manifest_key
from gpumux.core.config import GIB, Config
from gpumux.core.states import DAEMON_TRANSITIONS, DaemonState, transition
from gpumux.daemon.health import HealthMonitor
from gpumux.daemon.prebake import initial_states, make_checkpoints
from gpumux.daemon.reload import Reloader
from gpumux.daemon.sdnotify import Notifier, extend_timeout, watchdog
from gpumux.fleet.responder import AgentResponder
from gpumux.gpu.fake_ledger import create_ledger
from gpumux.gpu.probe import GpuProbe, open_probe
from gpumux.http.auth import ApiKeys
from gpumux.http.listener import listen
from gpumux.http.passive_health import BackendStreaks
from gpumux.http.proxy import Proxy
from gpumux.policy.base import make_policy
from gpumux.procs import ChildRegistry, Reaper, set_child_subreaper, sweep_leftovers
from gpumux.scheduler.orchestrator import Orchestrator
from gpumux.scheduler.runner import Scheduler
from gpumux.scheduler.state.core import SchedulerCore
from gpumux.telemetry.backend_metrics import BACKENDS_PATH, BackendMetrics
from gpumux.telemetry.epp import EPP_PATH, EppMetrics
from gpumux.telemetry.metrics import Metrics, measure_loop_lag, metrics_app
from gpumux.telemetry.observer import DaemonObserver
from gpumux.telemetry.resources import Resources

log = structlog.get_logger("gpumux.daemon.daemon")

#: Nominal per-GPU capacity when no probe can tell (placement then reasons in fractions).
NOMINAL_CAPACITY_BYTES = 80 * GIB
LOOP_LAG_INTERVAL_SECS = 0.5
#: Upstream keep-alive must stay below vLLM's own 5 s idle close.
UPSTREAM_KEEPALIVE_SECS = 4.0


@dataclass(frozen=True)
class ServeOptions:
    port: int | None = None
    admin_port: int | None = None
    metrics_port: int | None = None
    config_path: str | None = None  # re-read on SIGHUP


def resolve_state_dir(config: Config) -> Path:
    if config.state_dir:
        return Path(config.state_dir)
    if os.environ.get("STATE_DIRECTORY"):  # systemd StateDirectory=
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "gpumux"


class Daemon:
    def __init__(self, config: Config, options: ServeOptions) -> None:
        self.config = config
        self.options = options
        self.state = DaemonState.STARTING
        self._stop = asyncio.Event()

    def _set_state(self, target: DaemonState) -> None:
        before = self.state
        self.state = transition(DAEMON_TRANSITIONS, before, target, what="daemon")
        log.info("daemon_state_changed", before=before.value, after=target.value)

    @property
    def shutting_down(self) -> bool:
        return self.state is not DaemonState.SERVING

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        config = self.config
        admin_at = admin_port(config, self.options.admin_port)
        # Before anything binds: a named-but-unset token is a config error (exit 2).
        admin_token = AdminToken.from_env(config, serving=admin_at is not None)
        check_manifest_key(config)  # likewise a named-but-unset image signing key
        notifier = Notifier.from_env()
        state_dir = resolve_state_dir(config)
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        swept = sweep_leftovers(state_dir)
        if swept:
            log.warning("leftovers_swept", pids=swept)
        set_child_subreaper()
        loop = asyncio.get_running_loop()
        reaper = Reaper()
        reaper.install(loop)
        ledger_path = self._prepare_ledger(state_dir)
        probe = await open_probe(config.gpu, ledger_path=ledger_path)
        capacity = await self._capacity(probe)
        metrics = Metrics()
        metrics.init_models(config.models)
        observer = DaemonObserver(metrics)
        checkpoints = make_checkpoints(
            config,
            state_dir / "logs",
            lambda op, secs: metrics.checkpoint_ops_duration.labels(op).observe(secs),
            observer.restore_failed,
        )
        # Models with a usable pre-baked image start CHECKPOINTED (restored on demand).
        prebaked = await initial_states(config, checkpoints)
        for alias, (state, _weights) in prebaked.items():
            metrics.set_model_state(alias, state)
        core = SchedulerCore(config, make_policy(config.policy), capacity, initial_states=prebaked)
        pools = UpstreamPools(UPSTREAM_KEEPALIVE_SECS)  # per backend, so a dump can drop one
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=UPSTREAM_KEEPALIVE_SECS)
        session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        scheduler_ref: list[Scheduler] = []
        backends = Backends(
            config,
            session=session,
            reaper=reaper,
            registry=ChildRegistry(state_dir),
            log_dir=state_dir / "logs",
            ledger_path=ledger_path,
            on_exit=lambda model, pid, code: scheduler_ref[0].process_exited(model, pid, code),
            pools=pools,
            checkpoints=checkpoints,
        )
        scheduler = Scheduler(core, Orchestrator(backends, loop.time), observer, loop.time)
        scheduler_ref.append(scheduler)
        api_keys = ApiKeys.from_env_value(os.environ.get(config.api_keys_env or "", ""))
        streaks = BackendStreaks(config.supervision.passive_5xx_threshold)
        proxy = Proxy(
            config,
            scheduler,
            session,
            metrics,
            api_keys,
            lambda: self.shutting_down,
            pools,
            streaks=streaks,
        )
        resources = Resources(probe, metrics, scheduler.report_host_memory)
        # -- fleet (issue 13): node status for /api/node, the HAProxy agent, /metrics/epp --
        node = NodeSources(core, capacity, resources, lambda: self.state, loop.time)
        node_status = partial(read_node_status, node)
        agent = AgentResponder(node_status, config.agent_host, config.agent_port or 0)
        epp = EppMetrics(lambda: epp_snapshot(node_status()), session, backends.live_ports)
        # -- end fleet --
        reloader = Reloader(
            self.options.config_path,
            config,
            scheduler=scheduler,
            backends=backends,
            proxy=proxy,
            metrics=metrics,
            notifier=notifier,
        )
        admin: AdminApi | None = None
        runners: list[web.AppRunner] = []

        async def serve(
            app: web.Application, host: str, port: int, *, cancel_on_disconnect: bool = False
        ) -> None:
            # Every listener gets the same request-head deadline (slowloris, case 8).
            runners.append(
                await listen(
                    app,
                    host,
                    port,
                    header_timeout_secs=config.header_timeout_secs,
                    cancel_on_disconnect=cancel_on_disconnect,
                )
            )

        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(scheduler.run(), name="scheduler")
                if checkpoints is not None:
                    tasks.create_task(checkpoints.housekeeping(), name="images")
                tasks.create_task(
                    measure_loop_lag(metrics, LOOP_LAG_INTERVAL_SECS), name="loop-lag"
                )
                tasks.create_task(
                    resources.poll(config.host_memory.check_interval_secs), name="memory-poll"
                )
                tasks.create_task(reloader.run(), name="config-reload")
                tasks.create_task(watchdog(notifier), name="sd-watchdog")
                health = HealthMonitor(
                    scheduler,
                    backends.client,
                    config.supervision,
                    streaks,
                    lambda m, verdict: metrics.backend_5xx_streak_checks.labels(m, verdict).inc(),
                )
                tasks.create_task(health.run(), name="health")
                port = self.options.port if self.options.port is not None else config.port
                await serve(proxy.app(), config.host, port, cancel_on_disconnect=True)
                metrics_port = (
                    self.options.metrics_port
                    if self.options.metrics_port is not None
                    else config.metrics_port
                )
                if metrics_port:
                    app = metrics_app(metrics)
                    scraper = BackendMetrics(session, backends.live_ports)
                    app.router.add_get(BACKENDS_PATH, scraper.handle)
                    app.router.add_get(EPP_PATH, epp.handle)  # fleet (issue 13)
                    await serve(app, config.host, metrics_port)
                if admin_at is not None:
                    admin = build_admin(
                        config=lambda: reloader.config,
                        token=admin_token,
                        scheduler=scheduler,
                        observer=observer,
                        metrics=metrics,
                        resources=resources,
                        backends=backends,
                        session=session,
                        proxy=proxy_url(config.host, port),
                        clock=loop.time,
                        daemon_state=lambda: self.state.value,
                        node_status=node_status,  # fleet (issue 13)
                    )
                    await serve(admin.app(), config.admin_host, admin_at, cancel_on_disconnect=True)
                if config.agent_port is not None:  # fleet (issue 13): answers maint until serving
                    await agent.start()
                self._install_signals(loop)
                loop.add_signal_handler(signal.SIGHUP, reloader.request)
                self._set_state(DaemonState.SERVING)
                log.info(
                    "daemon_ready",
                    port=port,
                    metrics_port=metrics_port,
                    admin_port=admin_at,
                    models=list(config.models),
                )
                # Listeners are bound; models load on demand, so this never waits for one.
                notifier.ready(f"serving {len(config.models)} models on port {port}")
                await self._stop.wait()
                notifier.stopping()
                async with extend_timeout(notifier):
                    await self._shutdown(scheduler, backends)
                raise _Finished
        except* _Finished:
            pass
        finally:
            await agent.close()  # fleet (issue 13)
            if admin is not None:
                admin.close()  # ends SSE streams, so the admin runner's cleanup is quick
            for runner in reversed(runners):
                await runner.cleanup()
            await backends.close()
            await pools.close()
            await session.close()
            probe.close()
            reaper.uninstall()
            notifier.close()
        self._set_state(DaemonState.STOPPED)
        log.info("daemon_stopped")
        return 0

    async def _shutdown(self, scheduler: Scheduler, backends: Backends) -> None:
        self._set_state(DaemonState.DRAINING)
        log.info("daemon_stopping")
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
        await backends.close()

    def _prepare_ledger(self, state_dir: Path) -> Path | None:
        gpu = self.config.gpu
        if gpu.probe != "fake":
            return None
        path = (
            Path(gpu.fake_ledger_path)
            if gpu.fake_ledger_path
            else state_dir / "fake-gpu-ledger.json"
        )
        create_ledger(path, [int(gib * GIB) for gib in gpu.fake_capacity_gib])
        return path

    async def _capacity(self, probe: GpuProbe) -> dict[int, int]:
        gpus = await probe.read()
        if gpus:
            return {g.index: g.total_bytes for g in gpus}
        indices = {i for m in self.config.models.values() for i in m.gpu_indices}
        log.warning("gpu_capacity_unknown", probe=probe.name, nominal_bytes=NOMINAL_CAPACITY_BYTES)
        return dict.fromkeys(indices, NOMINAL_CAPACITY_BYTES)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)


class _Finished(Exception):
    """Leaves the task group once shutdown is complete (cancels the background tasks)."""


def serve(config: Config, options: ServeOptions) -> int:
    return asyncio.run(Daemon(config, options).run())
