"""SIGHUP: re-read the config file and apply its model table to the running daemon.

Owns: loading the file (in a thread), refusing an invalid one (the old config keeps
serving, `config_reload_failed` lists every problem), merging the new `models` into the
running config, and handing it, in order, to the scheduler core (which adds, drains and
stops, or restarts slots), then to the backends and the proxy; systemd hears
RELOADING=1 … READY=1 around it.
Does not: rebind ports or swap policy, GPU or supervision settings — those need a
restart and are reported as `config_reload_ignored` — or decide how a model leaves
(the core does).

Order matters: the core learns first, so a changed model is already draining (no new
grants) when the proxy and backends see its new port; an untouched model's slot,
process and client are never replaced, so its streams do not blip.
"""

from __future__ import annotations

import asyncio

import structlog

from gpumux.backends.effects import Backends
from gpumux.core.config import Config
from gpumux.core.config_rules import ConfigProblems
from gpumux.daemon.config_file import load_config
from gpumux.daemon.sdnotify import Notifier
from gpumux.http.proxy import Proxy
from gpumux.scheduler.inputs import Reload
from gpumux.scheduler.runner import Scheduler
from gpumux.telemetry.metrics import Metrics

log = structlog.get_logger(__name__)

RELOAD_REPLY_SECS = 10.0


class Reloader:
    def __init__(
        self,
        path: str | None,
        config: Config,
        *,
        scheduler: Scheduler,
        backends: Backends,
        proxy: Proxy,
        metrics: Metrics,
        notifier: Notifier,
    ) -> None:
        self._path = path
        self.config = config
        self._scheduler = scheduler
        self._backends = backends
        self._proxy = proxy
        self._metrics = metrics
        self._notifier = notifier
        self._wanted = asyncio.Event()

    def request(self) -> None:
        """Signal-handler side: ask for a reload (several SIGHUPs coalesce into one)."""
        self._wanted.set()

    async def run(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            await self.reload_once()

    async def reload_once(self) -> bool:
        if self._path is None:
            log.warning("config_reload_failed", errors=["no config file to re-read"])
            return False
        try:
            new, warnings = await asyncio.to_thread(load_config, self._path)
        except ConfigProblems as problems:
            log.error("config_reload_failed", path=self._path, errors=problems.errors)
            return False
        for warning in warnings:
            log.warning("config_warning", warning=warning)
        ignored = sorted(
            key
            for key in Config.model_fields
            if key != "models" and getattr(new, key) != getattr(self.config, key)
        )
        if ignored:
            log.warning("config_reload_ignored", keys=ignored, reason="needs a restart")
        merged = self.config.model_copy(update={"models": dict(new.models)})
        self._notifier.reloading()
        try:
            reply = await self._scheduler.admin(Reload(merged), timeout=RELOAD_REPLY_SECS)
        except TimeoutError:
            log.error("config_reload_failed", errors=["the scheduler did not answer"])
            return False
        finally:
            self._notifier.ready()
        if not reply.ok:
            log.error("config_reload_failed", errors=[reply.detail])
            return False
        self.config = merged
        self._backends.reload(merged)
        self._proxy.reload(merged)
        self._metrics.init_models([m for m in merged.models if m in _list(reply.data, "added")])
        return True  # the core's `config_reloaded` event says what changed


def _list(data: dict[str, object], key: str) -> list[str]:
    value = data.get(key)
    return [str(v) for v in value] if isinstance(value, list) else []
