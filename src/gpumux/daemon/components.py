"""The composition root of `gpumux serve`: every part of the daemon, built once, in order.

Owns: `build_components(config, options, lifecycle)` — the start-up checks that must
fail before anything binds (a named-but-unset admin token or image signing key), then
sweep leftovers → subreaper → reaper → ledger → GPU probe and capacity → metrics →
checkpoints and pre-baked initial states (`initial_state`) → backends → scheduler →
proxy, resources, reloader, health monitor and admin API — and `Components`, the frozen
result, whose `close()` releases what was opened in reverse order.
Does not: start a task, bind a port or handle a signal (the daemon's steps do), or
decide anything. The process-side parts are built by `adapters`, which the pre-bake
uses too, so no part is built two ways.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial

from aiohttp import web

from gpumux.admin.api import AdminApi
from gpumux.admin.auth import AdminToken
from gpumux.admin.node import NodeSources, NodeStatus, epp_snapshot, read_node_status
from gpumux.admin.setup import admin_port, build_admin, proxy_url
from gpumux.backends.adapters import AdapterLoader, VllmAdapterApi
from gpumux.backends.effects import Backends
from gpumux.checkpoint.checkpoints import Checkpoints
from gpumux.checkpoint.s3.auth import check_manifest_key
from gpumux.core.config import Config
from gpumux.daemon.adapters import (
    BackendParts,
    ProcessExits,
    make_checkpoints,
    open_backends,
    supervise_children,
)
from gpumux.daemon.health import HealthMonitor
from gpumux.daemon.initial_state import gpu_capacity, initial_states
from gpumux.daemon.lifecycle import DaemonLifecycle
from gpumux.daemon.reload import Reloader
from gpumux.daemon.sdnotify import Notifier
from gpumux.daemon.state_dir import prepare_fake_ledger, resolve_state_dir
from gpumux.fleet.responder import AgentResponder
from gpumux.gpu.probe import GpuProbe, open_probe
from gpumux.http.auth import ApiKeys
from gpumux.http.lora import AdapterGate
from gpumux.http.passive_health import BackendStreaks
from gpumux.http.proxy import Proxy
from gpumux.policy.registry import make_policy
from gpumux.scheduler.orchestrator import Orchestrator
from gpumux.scheduler.runner import Scheduler
from gpumux.scheduler.state.core import SchedulerCore
from gpumux.telemetry.backend_metrics import BACKENDS_PATH, BackendMetrics
from gpumux.telemetry.epp import EPP_PATH, EppMetrics
from gpumux.telemetry.metrics import Metrics, metrics_app
from gpumux.telemetry.observer import DaemonObserver
from gpumux.telemetry.resources import Resources


@dataclass(frozen=True)
class ServeOptions:
    port: int | None = None
    admin_port: int | None = None
    metrics_port: int | None = None
    config_path: str | None = None  # re-read on SIGHUP


@dataclass(frozen=True)
class Ports:
    """The ports the daemon binds: command-line overrides over the config."""

    proxy: int
    metrics: int | None  # 0 or None: no metrics listener
    admin: int | None  # None: no admin listener

    @classmethod
    def of(cls, config: Config, options: ServeOptions) -> Ports:
        return cls(
            proxy=options.port if options.port is not None else config.port,
            metrics=(
                options.metrics_port if options.metrics_port is not None else config.metrics_port
            ),
            admin=admin_port(config, options.admin_port),
        )


@dataclass(frozen=True)
class Components:
    """Every part of one daemon, each built once; `daemon` starts, serves and stops them."""

    config: Config
    ports: Ports
    notifier: Notifier
    probe: GpuProbe
    metrics: Metrics
    observer: DaemonObserver
    checkpoints: Checkpoints | None
    parts: BackendParts
    scheduler: Scheduler
    proxy: Proxy
    resources: Resources
    reloader: Reloader
    health: HealthMonitor
    admin: AdminApi | None
    node_status: Callable[[], NodeStatus]  # the fleet's read-only answer (`/api/node`)
    agent: AgentResponder  # HAProxy's agent-check on `agent_port` (started only if set)
    epp: EppMetrics  # llm-d's endpoint-picker series on the metrics port
    _opened: AsyncExitStack = field(repr=False)  # what `close()` releases

    @property
    def backends(self) -> Backends:
        return self.parts.backends

    def metrics_app(self) -> web.Application:
        """Prometheus' page, plus each live backend's own metrics under BACKENDS_PATH."""
        app = metrics_app(self.metrics)
        scraper = BackendMetrics(self.parts.session, self.backends.live_ports)
        app.router.add_get(BACKENDS_PATH, scraper.handle)
        app.router.add_get(EPP_PATH, self.epp.handle)
        return app

    async def close(self) -> None:
        """Release in reverse order of building: backends (every tree), pools, session,
        probe, reaper, and the systemd socket last."""
        await self._opened.aclose()


async def build_components(
    config: Config, options: ServeOptions, lifecycle: DaemonLifecycle
) -> Components:
    """Every part of the daemon; raises ConfigProblems before anything is opened."""
    ports = Ports.of(config, options)
    # Before anything binds: a named-but-unset token is a config error (exit 2).
    admin_token = AdminToken.from_env(config, serving=ports.admin is not None)
    check_manifest_key(config)  # likewise a named-but-unset image signing key
    stack = AsyncExitStack()
    try:
        return await _build(config, options, lifecycle, ports, admin_token, stack)
    except BaseException:
        await stack.aclose()
        raise


async def _build(
    config: Config,
    options: ServeOptions,
    lifecycle: DaemonLifecycle,
    ports: Ports,
    admin_token: AdminToken,
    stack: AsyncExitStack,
) -> Components:
    loop = asyncio.get_running_loop()
    notifier = Notifier.from_env()
    stack.callback(notifier.close)
    state_dir = resolve_state_dir(config)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    reaper = supervise_children(stack, state_dir)
    ledger_path = prepare_fake_ledger(config, state_dir, keep_existing=False)
    probe = await open_probe(config.gpu, ledger_path=ledger_path)
    stack.callback(probe.close)
    capacity = await gpu_capacity(config, probe)
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
    exits = ProcessExits()
    parts = open_backends(
        stack,
        config,
        reaper=reaper,
        registry_dir=state_dir,
        log_dir=state_dir / "logs",
        ledger_path=ledger_path,
        checkpoints=checkpoints,
        on_exit=exits,
    )
    backends = parts.backends
    core = SchedulerCore(
        config,
        make_policy(config.policy),
        capacity,
        initial_states=prebaked,
        standing_grants=config.policy.standing_grants,
    )
    scheduler = Scheduler(
        core,
        Orchestrator(backends, loop.time),
        observer,
        loop.time,
        lease_sync_secs=config.policy.lease_sync_ms / 1000,
    )
    exits.connect(scheduler.process_exited)
    streaks = BackendStreaks(config.supervision.passive_5xx_threshold)
    adapter_loader = AdapterLoader(
        config,
        VllmAdapterApi(parts.pools.session),
        backends.weight_resets,
        lambda model, adapter, outcome: metrics.adapter_loads.labels(model, adapter, outcome).inc(),
    )
    proxy = Proxy(
        config,
        scheduler,
        parts.pools,
        metrics,
        ApiKeys.from_env_value(os.environ.get(config.api_keys_env or "", "")),
        lifecycle.shutting_down,
        streaks=streaks,
        adapters=AdapterGate(adapter_loader, metrics),
    )
    resources = Resources(probe, metrics, scheduler.report_host_memory)
    node_status = partial(
        read_node_status,
        NodeSources(lambda: scheduler.view, resources, lambda: lifecycle.state),
    )
    agent = AgentResponder(node_status, config.agent_host, config.agent_port or 0)
    stack.push_async_callback(agent.close)
    epp = EppMetrics(lambda: epp_snapshot(node_status()), parts.session, backends.live_ports)
    reloader = Reloader(
        options.config_path,
        config,
        scheduler=scheduler,
        backends=backends,
        proxy=proxy,
        metrics=metrics,
        notifier=notifier,
    )
    health = HealthMonitor(
        scheduler,
        backends.client,
        config.supervision,
        streaks,
        lambda m, verdict: metrics.backend_5xx_streak_checks.labels(m, verdict).inc(),
    )
    admin = None
    if ports.admin is not None:
        admin = build_admin(
            config=lambda: reloader.config,
            token=admin_token,
            scheduler=scheduler,
            observer=observer,
            metrics=metrics,
            resources=resources,
            pid_of=backends.pid_of,
            recent_output=backends.recent_output,
            images=checkpoints.catalog.status if checkpoints is not None else dict,
            session=parts.session,
            proxy=proxy_url(config.host, ports.proxy),
            clock=loop.time,
            daemon_state=lifecycle.state_name,
            requests=proxy.request_log.latest,
            node_status=node_status,
        )
    return Components(
        config=config,
        ports=ports,
        notifier=notifier,
        probe=probe,
        metrics=metrics,
        observer=observer,
        checkpoints=checkpoints,
        parts=parts,
        scheduler=scheduler,
        proxy=proxy,
        resources=resources,
        reloader=reloader,
        health=health,
        admin=admin,
        node_status=node_status,
        agent=agent,
        epp=epp,
        _opened=stack,
    )
