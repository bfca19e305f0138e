"""Debian's HAProxy as a real subprocess for the fleet tier: start, check, read, stop.

Owns: the prerequisite check (a missing `haproxy` FAILS the test with the fix, never
skips: `scripts/test` installs it), `haproxy -c`, running one instance in the foreground
from a config file (in its own working directory, so a relative `stats socket` path is
its own), its runtime API (`show stat`: each server entry's state and weight, what its
agent said last), waiting until every agent has answered, and its log lines.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

STARTUP_TIMEOUT_SECS = 15.0


def require_haproxy() -> str:
    path = shutil.which("haproxy")
    if path is None:
        pytest.fail("haproxy is not installed; run scripts/test (it installs Debian's haproxy)")
    return path


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """`haproxy -c -f path`: exit 0 when HAProxy accepts the file."""
    return subprocess.run(
        [require_haproxy(), "-c", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@dataclass
class Haproxy:
    process: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path
    stats_socket: Path

    def stat(self) -> dict[str, tuple[str, int]]:
        """`backend/server` -> (status, weight) for every server entry."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(b"show stat\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        lines = b"".join(chunks).decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        found: dict[str, tuple[str, int]] = {}
        for line in lines[1:]:
            if not line:
                continue
            row = dict(zip(header, line.split(","), strict=False))
            if row["svname"] in ("FRONTEND", "BACKEND"):
                continue
            found[f"{row['pxname']}/{row['svname']}"] = (row["status"], int(row["weight"] or 0))
        return found

    def wait_agents(self, timeout: float = 20.0) -> dict[str, tuple[str, int]]:
        """Wait until every model server entry has heard its agent (none left in MAINT)."""
        deadline = time.monotonic() + timeout
        while True:
            self.assert_running()
            with suppress(OSError):
                states = self.stat()
                pending = [k for k, (s, _) in states.items() if "MAINT" in s]
                if states and not pending:
                    return states
            if time.monotonic() > deadline:
                raise AssertionError(f"HAProxy agents not answered in {timeout}s: {pending}")
            time.sleep(0.05)

    def wait_state(self, entry: str, status: str, timeout: float = 20.0) -> None:
        """Wait until `backend/server` shows `status` (UP, DRAIN, DOWN, ...)."""
        deadline = time.monotonic() + timeout
        while True:
            self.assert_running()
            with suppress(OSError):
                if self.stat().get(entry, ("?", 0))[0].startswith(status):
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"{entry} not {status} in {timeout}s: {self.stat()}")
            time.sleep(0.05)

    def assert_running(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"haproxy exited ({self.process.returncode}):\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request_lines(self) -> list[str]:
        """Its per-request log lines (the generated `log-format`), oldest first."""
        return [line for line in self.log().splitlines() if " gpumux " in line]


@contextmanager
def running_haproxy(config: Path, workdir: Path, stats_socket: str) -> Iterator[Haproxy]:
    """HAProxy in the foreground, started in `workdir` (relative paths resolve there)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "haproxy.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [require_haproxy(), "-db", "-f", str(config.resolve())],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    haproxy = Haproxy(process, workdir, log_path, workdir / stats_socket)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECS
        while not haproxy.stats_socket.exists():
            haproxy.assert_running()
            if time.monotonic() > deadline:
                raise AssertionError(f"haproxy did not start:\n{haproxy.log()}")
            time.sleep(0.05)
        yield haproxy
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGUSR1)  # soft stop: finish what is in flight
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
