"""systemd notify against a real AF_UNIX datagram socket: READY, WATCHDOG, STOPPING, EXTEND."""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gpumux.daemon.sdnotify import Notifier, extend_timeout, watchdog
from tests.support.client import CHAT, chat_body, http_status, post
from tests.support.daemon import daemon_config, mock_model, start_daemon

pytestmark = pytest.mark.integration


class NotifySocket:
    """The systemd side: a bound datagram socket that timestamps every message.

    `wait_for` consumes messages in order: it returns the first message carrying the
    field that no earlier `wait_for` has passed over, whether it arrived during this
    wait or was already received (one `pump` often receives several datagrams, e.g.
    STOPPING=1 and EXTEND_TIMEOUT_USEC together)."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._read = 0  # messages before this index were passed over by a wait_for

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def wait_for(self, field: str, timeout: float = 20.0, *, after: float = -math.inf) -> float:
        """When the next unread message carrying `field` (received after `after`) came."""
        deadline = time.monotonic() + timeout
        while True:
            for index in range(self._read, len(self.messages)):
                at, text = self.messages[index]
                if at > after and field in text.split("\n"):
                    self._read = index + 1
                    return at
            if time.monotonic() > deadline:
                raise AssertionError(f"no {field} within {timeout}s; got {self.messages}")
            self.pump(0.1)

    def times_of(self, field: str) -> list[float]:
        return [at for at, text in self.messages if field in text.split("\n")]


@contextmanager
def notify_socket(address: str | bytes) -> Iterator[NotifySocket]:
    listener = NotifySocket(address)
    try:
        yield listener
    finally:
        listener.sock.close()


def test_ready_after_listeners_watchdog_pings_stopping_and_extend(tmp_path: Path) -> None:
    """READY=1 comes once the ports answer (not after model loads); pings; clean stop."""
    slow = ["--mock-tokens-per-sec", "10"]
    # warmup with a 3 s start: READY must not wait for it.
    models = {"a": mock_model(extra_args=[*slow, "--mock-startup-secs", "3"])}
    config = daemon_config(tmp_path, models, warmup=True)
    with notify_socket(str(tmp_path / "notify.sock")) as systemd:
        env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000"}
        daemon = start_daemon(tmp_path, config, env)
        try:
            systemd.wait_for("READY=1")
            assert http_status(daemon.url + "/health") == 200  # bound before READY
            served = post(daemon, CHAT, chat_body("a"))
            assert served.status == 200  # served after the warm-up start, READY came first
            systemd.pump(2.0)
            pings = systemd.times_of("WATCHDOG=1")
            assert len(pings) >= 4
            gaps = [b - a for a, b in itertools.pairwise(pings)]
            assert max(gaps[-3:]) <= 0.5 + 0.25  # WatchdogSec/2, plus scheduling slack

            stream: list[int] = []
            thread = threading.Thread(
                target=lambda: stream.append(
                    post(daemon, "/v1/chat/completions", chat_body("a", max_tokens=25)).status
                )
            )
            thread.start()
            time.sleep(0.5)  # the request is in flight (simulated decode latency)
            daemon.process.send_signal(signal.SIGTERM)
            systemd.wait_for("STOPPING=1")
            systemd.wait_for(f"EXTEND_TIMEOUT_USEC={int(6e6)}")
            thread.join(timeout=20)
            assert stream == [200]
            assert daemon.process.wait(timeout=20) == 0
        finally:
            daemon.stop()


def test_watchdog_pings_stop_while_the_daemon_is_frozen(tmp_path: Path) -> None:
    """No WATCHDOG=1 arrives while the daemon cannot run; pings resume afterwards."""
    config = daemon_config(tmp_path, {"a": mock_model()})
    with notify_socket(str(tmp_path / "n.sock")) as systemd:
        env = {"NOTIFY_SOCKET": str(tmp_path / "n.sock"), "WATCHDOG_USEC": "400000"}
        daemon = start_daemon(tmp_path, config, env)
        try:
            systemd.wait_for("READY=1")
            daemon.process.send_signal(signal.SIGSTOP)
            systemd.pump(0.3)  # drain what was already queued
            frozen_from = time.monotonic()
            systemd.pump(1.2)
            resumed_at = time.monotonic()
            daemon.process.send_signal(signal.SIGCONT)
            assert not [t for t in systemd.times_of("WATCHDOG=1") if t > frozen_from]
            systemd.wait_for("WATCHDOG=1", timeout=5, after=resumed_at)
        finally:
            daemon.process.send_signal(signal.SIGCONT)
            daemon.stop()


def test_abstract_socket_address_receives_ready(tmp_path: Path) -> None:
    """NOTIFY_SOCKET=@name reaches a socket in the abstract namespace."""
    name = f"gpumux-test-{os.getpid()}-{time.monotonic_ns()}"
    config = daemon_config(tmp_path, {"a": mock_model()})
    with notify_socket(b"\0" + name.encode()) as systemd:
        daemon = start_daemon(tmp_path, config, {"NOTIFY_SOCKET": "@" + name})
        try:
            systemd.wait_for("READY=1")
        finally:
            daemon.stop()


async def test_an_event_loop_stall_withholds_pings(tmp_path: Path) -> None:
    """Pings come from the loop: a blocking stall in any coroutine stops them."""
    with notify_socket(str(tmp_path / "s.sock")) as systemd:
        receiver = threading.Thread(target=systemd.pump, args=(2.2,))
        receiver.start()
        notifier = Notifier(str(tmp_path / "s.sock"), watchdog_usec=200_000)
        task = asyncio.get_running_loop().create_task(watchdog(notifier))
        try:
            await asyncio.sleep(0.5)
            # The stall under test: nothing on this loop runs, the watchdog included.
            time.sleep(1.0)  # noqa: ASYNC251
            await asyncio.sleep(0.5)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            notifier.close()
        receiver.join()
        pings = systemd.times_of("WATCHDOG=1")
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert len(pings) >= 8  # every 0.1 s outside the stall
        assert max(gaps) >= 0.9  # ... and none during it
        assert sorted(gaps)[-2] < 0.5


async def test_extend_timeout_repeats_until_the_body_ends(tmp_path: Path) -> None:
    """EXTEND_TIMEOUT_USEC is re-sent while the body runs, and stops when it ends."""
    with notify_socket(str(tmp_path / "e.sock")) as systemd:
        notifier = Notifier(str(tmp_path / "e.sock"))
        async with extend_timeout(notifier, every_secs=0.1, extend_by_secs=1.0):
            await asyncio.sleep(0.35)
        await asyncio.sleep(0.3)
        notifier.close()
        systemd.pump(0.2)
        assert len(systemd.times_of("EXTEND_TIMEOUT_USEC=1000000")) in (3, 4, 5)


def test_notifier_is_a_no_op_outside_systemd() -> None:
    """Without NOTIFY_SOCKET nothing is sent and no watchdog is armed."""
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert notifier.watchdog_interval_secs is None
    other = Notifier.from_env({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval_secs is None  # meant for another process
