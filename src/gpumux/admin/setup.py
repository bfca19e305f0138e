"""Builds the admin API from the daemon's components (kept out of the composition root).

Owns: choosing the admin port (`--admin-port` over `admin_port`), the proxy URL the chat
box forwards to (loopback when the proxy binds a wildcard address), and assembling the
`AdminApi` with its status sources.
Does not: bind anything (the daemon does), hold state, or know the backends adapter: the
composition root hands it the three read-outs it needs (a model's pid, its recent
output, the image catalog's status) as callables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from gpumux.admin.api import AdminApi, RequestRows
from gpumux.admin.auth import AdminToken
from gpumux.admin.chat import ChatForwarder
from gpumux.admin.node import NodeStatus
from gpumux.admin.status import StatusSources
from gpumux.core.config import Config
from gpumux.scheduler.runner import Scheduler
from gpumux.telemetry.metrics import Metrics
from gpumux.telemetry.observer import DaemonObserver
from gpumux.telemetry.resources import Resources

_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def admin_port(config: Config, override: int | None) -> int | None:
    return override if override is not None else config.admin_port


def proxy_url(host: str, port: int) -> str:
    if host in _WILDCARDS:
        return f"http://127.0.0.1:{port}"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def build_admin(
    *,
    config: Callable[[], Config],
    token: AdminToken,
    scheduler: Scheduler,
    observer: DaemonObserver,
    metrics: Metrics,
    resources: Resources,
    pid_of: Callable[[str], int | None],
    recent_output: Callable[[str], list[str]],
    images: Callable[[], Mapping[str, Any]],
    session: aiohttp.ClientSession,
    proxy: str,
    clock: Callable[[], float],
    daemon_state: Callable[[], str],
    requests: RequestRows,
    node_status: Callable[[], NodeStatus],
) -> AdminApi:
    sup = config().supervision
    status = StatusSources(
        config=config,
        view=lambda: scheduler.view,
        settle=scheduler.settle,
        observer=observer,
        metrics=metrics,
        resources=resources,
        pid_of=pid_of,
        clock=clock,
        daemon_state=daemon_state,
        proxy_url=proxy,
        images=images,
    )
    chat = ChatForwarder(
        session,
        proxy,
        connect_timeout_secs=sup.upstream_connect_timeout_secs,
        idle_timeout_secs=sup.upstream_idle_timeout_secs,
    )
    return AdminApi(scheduler, status, token, chat, recent_output, node_status, requests)
