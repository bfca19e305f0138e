"""The daemon's own lifecycle: STARTING → SERVING → DRAINING → STOPPED, and the stop request.

Owns: the current `DaemonState` (moved only through the guarded `transition`, which logs
each change) and the event a signal sets to ask for shutdown.
Does not: act on a state (the daemon's steps do) or install signal handlers.

Built before the components, because several of them read it: the proxy refuses new
requests once the daemon is not SERVING, and the admin status shows the state.
"""

from __future__ import annotations

import asyncio

import structlog

from gpumux.core.states import DAEMON_TRANSITIONS, DaemonState, transition

log = structlog.get_logger(__name__)


class DaemonLifecycle:
    def __init__(self) -> None:
        self.state = DaemonState.STARTING
        self._stop = asyncio.Event()

    def transition(self, target: DaemonState) -> None:
        before = self.state
        self.state = transition(DAEMON_TRANSITIONS, before, target, what="daemon")
        log.info("daemon_state_changed", before=before.value, after=target.value)

    def shutting_down(self) -> bool:
        return self.state is not DaemonState.SERVING

    def state_name(self) -> str:
        return self.state.value

    def request_stop(self) -> None:
        self._stop.set()

    async def stop_requested(self) -> None:
        await self._stop.wait()
