"""systemd's notify protocol (sd_notify(3)), in-house: READY, STOPPING, the watchdog.

Owns: `Notifier` (one AF_UNIX datagram per message to `$NOTIFY_SOCKET`, abstract `@`
addresses included), the watchdog interval from `$WATCHDOG_USEC`/`$WATCHDOG_PID`, the
`watchdog()` task that pings at half that interval from the event loop itself, and
`extend_timeout()`, which keeps sending `EXTEND_TIMEOUT_USEC` while a long stop runs.
Does not: decide when the daemon is ready or stopping (the daemon calls `ready()` once its
listeners are bound), or depend on libsystemd. Outside systemd every call is a no-op.

Why the pings come from a loop task and not a thread: a thread would keep pinging while
the event loop is wedged, and systemd would never restart a daemon that no longer serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable, Mapping

import structlog

log = structlog.get_logger(__name__)

#: How often EXTEND_TIMEOUT_USEC is re-sent while a stop runs, and by how much it extends.
EXTEND_EVERY_SECS = 2.0
EXTEND_BY_SECS = 6.0


class Notifier:
    """Sends notify messages; silent (and cheap) when `NOTIFY_SOCKET` is unset."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self._address = _socket_address(address) if address else None
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_usec=_watchdog_usec(env))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval_secs(self) -> float | None:
        """Half of WatchdogSec= (systemd's advice), or None when no watchdog is armed."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def send(self, *fields: str) -> bool:
        """Send `KEY=VALUE` fields as one datagram; False (logged once) when it fails."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            # A full or vanished socket must never take the daemon down; say it once.
            if not self._failed:
                log.warning("sd_notify_failed", error=str(exc))
                self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=draining")

    def reloading(self) -> bool:
        return self.send("RELOADING=1", "STATUS=reloading the config")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _socket_address(address: str) -> str | bytes:
    if address.startswith("@"):
        return b"\0" + address[1:].encode()  # Linux abstract namespace
    return address


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    """WATCHDOG_USEC, unless WATCHDOG_PID names another process (sd_watchdog_enabled(3))."""
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None


async def watchdog(notifier: Notifier, healthy: Callable[[], bool] = lambda: True) -> None:
    """Ping WATCHDOG=1 every WatchdogSec/2 until cancelled; returns at once when unarmed.

    `healthy` lets the daemon withhold a ping (e.g. its scheduler task died); a stalled
    loop withholds them by itself, since this coroutine then never runs.
    """
    interval = notifier.watchdog_interval_secs
    if interval is None:
        return
    while True:
        if healthy():
            notifier.send("WATCHDOG=1")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def extend_timeout(
    notifier: Notifier,
    *,
    every_secs: float = EXTEND_EVERY_SECS,
    extend_by_secs: float = EXTEND_BY_SECS,
) -> AsyncIterator[None]:
    """While the body runs (a drain), keep pushing systemd's stop timeout out.

    Each message extends the deadline to now + `extend_by_secs`; the body is bounded by
    gpumux's own deadlines, so this never extends forever.
    """

    async def pump() -> None:
        usec = int(extend_by_secs * 1e6)
        while True:
            notifier.send(f"EXTEND_TIMEOUT_USEC={usec}")
            await asyncio.sleep(every_secs)

    if not notifier.enabled:
        yield
        return
    task = asyncio.get_running_loop().create_task(pump(), name="sd-extend-timeout")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
