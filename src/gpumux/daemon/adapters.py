"""The process-side half of the composition root, shared by `serve` and `serve --checkpoint`.

Owns: building, in order, what drives backend processes — sweeping a previous run's
children, becoming their subreaper and installing the `Reaper`; the `Checkpoints` of a
config; the HTTP session, the per-backend pools and `Backends` — and registering each
part's release on the caller's `AsyncExitStack`, so they close in reverse order even
when a later part fails to build. Also `ProcessExits`, the channel through which
`Backends` reports a backend's exit to whoever listens.
Does not: open the GPU probe, build the scheduler or any listener (`components` does, for
`serve`), or run a step (the pre-bake and the orchestrator do).
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import structlog

from gpumux.backends.effects import Backends, ExitCallback
from gpumux.backends.upstream import UpstreamPools
from gpumux.checkpoint.catalog import OpObserver
from gpumux.checkpoint.checkpoints import Checkpoints, FailureObserver
from gpumux.core.config import Config
from gpumux.procs import ChildRegistry, Reaper, set_child_subreaper, sweep_leftovers

log = structlog.get_logger(__name__)

#: Upstream keep-alive must stay below vLLM's own 5 s idle close.
UPSTREAM_KEEPALIVE_SECS = 4.0


class ProcessExits:
    """Backend exits, from `Backends` to the one listener connected to it.

    Why a channel: the scheduler needs the backends (its orchestrator drives them) and
    the backends report exits to the scheduler, so one side has to be connected after
    both exist. Exits come only from processes the scheduler started, so none can arrive
    before it is connected.
    """

    def __init__(self) -> None:
        self._listener: ExitCallback | None = None

    def connect(self, listener: ExitCallback) -> None:
        if self._listener is not None:
            raise RuntimeError("process exits already have a listener")
        self._listener = listener

    def __call__(self, model: str, pid: int, code: int) -> None:
        if self._listener is None:
            log.warning("backend_exit_unheard", model=model, pid=pid, code=code)
            return
        self._listener(model, pid, code)


def supervise_children(stack: AsyncExitStack, registry_dir: Path) -> Reaper:
    """Kill what a previous run left in `registry_dir`, adopt orphans, reap every child."""
    swept = sweep_leftovers(registry_dir)
    if swept:
        log.warning("leftovers_swept", pids=swept)
    set_child_subreaper()
    reaper = Reaper()
    reaper.install(asyncio.get_running_loop())
    stack.callback(reaper.uninstall)
    return reaper


def make_checkpoints(
    config: Config,
    log_dir: Path,
    observe: OpObserver | None = None,
    on_restore_failure: FailureObserver | None = None,
) -> Checkpoints | None:
    if config.checkpoint is None:
        return None
    return Checkpoints(
        config.checkpoint,
        log_dir=log_dir,
        observe=observe,
        on_restore_failure=on_restore_failure,
    )


@dataclass(frozen=True)
class BackendParts:
    """What talks to backend processes: the shared session, the pools and `Backends`."""

    session: aiohttp.ClientSession
    pools: UpstreamPools
    backends: Backends


def open_backends(
    stack: AsyncExitStack,
    config: Config,
    *,
    reaper: Reaper,
    registry_dir: Path,
    log_dir: Path,
    ledger_path: Path | None,
    checkpoints: Checkpoints | None,
    on_exit: ExitCallback,
) -> BackendParts:
    # Released in reverse: backends (every tree), then the pools, then the session.
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=UPSTREAM_KEEPALIVE_SECS)
    session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
    stack.push_async_callback(session.close)
    pools = UpstreamPools(UPSTREAM_KEEPALIVE_SECS)  # per backend, so a dump can drop one
    stack.push_async_callback(pools.close)
    backends = Backends(
        config,
        session=session,
        reaper=reaper,
        registry=ChildRegistry(registry_dir),
        log_dir=log_dir,
        ledger_path=ledger_path,
        on_exit=on_exit,
        pools=pools,
        checkpoints=checkpoints,
    )
    stack.push_async_callback(backends.close)
    return BackendParts(session, pools, backends)
