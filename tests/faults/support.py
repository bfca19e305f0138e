"""Helpers for the fault-injection suite: raw HTTP against the daemon, backend facts, pids.

Owns: small, bounded helpers the fault tests share — a raw HTTP exchange that returns
whatever came back (or how the connection ended), a streaming reader that records when
each chunk arrived, the mock backend's pids/events/faults, and a sampler of the fake
GPU ledger that remembers the highest booking it ever saw.
Does not: start daemons (`tests.support.daemon` does) or assert behaviour (the tests do).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import psutil

from gpumux.gpu.fake_ledger import allocations
from tests.support.daemon import RunningDaemon, get_json, post_json

#: Every wait in this suite has a deadline; this is the default for one HTTP exchange.
HTTP_TIMEOUT_SECS = 30.0


@dataclass
class Reply:
    """One HTTP exchange as the client saw it."""

    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float
    chunk_times: list[float] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


def chat(model: str = "a", **extra: Any) -> bytes:
    """A chat completion body (3 tokens unless `max_tokens` says otherwise)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
    }
    body.update(extra)
    return json.dumps(body).encode()


def request(
    url_port: int,
    path: str,
    body: bytes | None = None,
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    timeout: float = HTTP_TIMEOUT_SECS,
) -> Reply:
    """Send one request and read the whole reply, noting when each body chunk arrived."""
    sent = {"Content-Type": "application/json", **(headers or {})}
    conn = http.client.HTTPConnection("127.0.0.1", url_port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        chunks: list[bytes] = []
        times: list[float] = []
        while True:
            piece = response.read1(65536)
            if not piece:
                break
            chunks.append(piece)
            times.append(time.monotonic() - started)
        hdrs = {k.lower(): v for k, v in response.getheaders()}
        return Reply(response.status, hdrs, b"".join(chunks), time.monotonic() - started, times)
    finally:
        conn.close()


def post(
    daemon: RunningDaemon, path: str, body: bytes, *, timeout: float = HTTP_TIMEOUT_SECS, **kw: Any
) -> Reply:
    """POST `body` to the daemon's proxy port (see `request`)."""
    return request(daemon.config["port"], path, body, timeout=timeout, **kw)


def assert_openai_error(reply: Reply, status: int, code: str | None = None) -> dict[str, Any]:
    """The reply is an OpenAI-shaped JSON error with this status (and code)."""
    assert reply.status == status, (reply.status, reply.body[:500])
    assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
    error: dict[str, Any] = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str)
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def sse_error(body: bytes) -> dict[str, Any] | None:
    """The `error` object of the first error event in an SSE body, if any."""
    for line in body.split(b"\n"):
        if line.startswith(b"data: {") and b'"error"' in line:
            found: dict[str, Any] = json.loads(line[len(b"data: ") :])["error"]
            return found
    return None


def assert_failed_stream(reply: Reply, code: str) -> None:
    """A stream that failed: 200, an error event with `code`, then `[DONE]` (never a clean EOF)."""
    assert reply.status == 200, reply.body[:500]
    error = sse_error(reply.body)
    assert error is not None, reply.body[-500:]
    assert error["code"] == code, error
    assert set(error) == {"message", "type", "param", "code"}
    assert reply.body.endswith(b"data: [DONE]\n\n"), reply.body[-200:]


# ---- the mock backend ------------------------------------------------------------------


def backend_state(daemon: RunningDaemon, model: str) -> dict[str, Any]:
    """The mock backend's `/mock/state`: pids, sleep state, running/waiting counts."""
    state: dict[str, Any] = get_json(daemon.backend_url(model) + "/mock/state")
    return state


def backend_events(daemon: RunningDaemon, model: str) -> list[dict[str, Any]]:
    """Everything the mock backend recorded (`/mock/events`), oldest first."""
    found: list[dict[str, Any]] = get_json(daemon.backend_url(model) + "/mock/events")["events"]
    return found


def event_names(daemon: RunningDaemon, model: str) -> list[str]:
    """Just the names of the backend's recorded events, in order."""
    return [str(e["event"]) for e in backend_events(daemon, model)]


def set_faults(daemon: RunningDaemon, model: str, **knobs: Any) -> None:
    """Turn mock fault knobs on at runtime (`POST /mock/faults`)."""
    post_json(daemon.backend_url(model) + "/mock/faults", knobs)


def tree_pids(root: int) -> list[int]:
    """`root` and its descendants (empty when the root is gone)."""
    try:
        proc = psutil.Process(root)
        return [root, *(p.pid for p in proc.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def alive(pid: int) -> bool:
    """True for a live process; zombies and vanished pids are dead."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def spawn_count(daemon: RunningDaemon, model: str) -> int:
    """How many times the daemon spawned `model`'s backend (from its JSON log)."""
    return sum(
        1
        for e in daemon.log_events()
        if e.get("event") == "process_spawned" and e.get("model") == model
    )


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """SIGSTOP `pid` for the body; SIGCONT it afterwards if it still exists."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


# ---- the fake GPU ledger ---------------------------------------------------------------


def ledger_used(daemon: RunningDaemon) -> dict[str, int]:
    """Bytes booked per GPU index in the fake ledger right now."""
    data: dict[str, Any] = json.loads(daemon.ledger_path.read_text())
    used: dict[str, int] = {}
    for booking in data["allocations"].values():
        for gpu, amount in booking["gpus"].items():
            used[gpu] = used.get(gpu, 0) + int(amount)
    return used


def ledger_host_bytes(daemon: RunningDaemon) -> int:
    """Host bytes live pids hold according to the fake ledger (dead pids pruned)."""
    return sum(a.host_bytes for a in allocations(daemon.ledger_path).values())


class LedgerWatch:
    """Samples the ledger every few ms in a thread: the highest use per GPU, and the most
    host RAM live sleepers held at once (level-1 weights, cuda-checkpoint images)."""

    def __init__(self, daemon: RunningDaemon, interval_secs: float = 0.005) -> None:
        self._daemon = daemon
        self._interval = interval_secs
        self._stop = threading.Event()
        self.peak: dict[str, int] = {}
        self.peak_host = 0
        self.samples = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with suppress(OSError, ValueError, KeyError):  # a write in progress
                for gpu, used in ledger_used(self._daemon).items():
                    self.peak[gpu] = max(self.peak.get(gpu, 0), used)
                self.peak_host = max(self.peak_host, ledger_host_bytes(self._daemon))
                self.samples += 1
            self._stop.wait(self._interval)

    def __enter__(self) -> LedgerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ---- raw sockets -----------------------------------------------------------------------


def open_stream(
    daemon: RunningDaemon, body: bytes, path: str = "/v1/chat/completions"
) -> socket.socket:
    """Send a request on a raw socket and return it once the status line arrived."""
    sock = socket.create_connection(("127.0.0.1", daemon.config["port"]), timeout=15)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock
