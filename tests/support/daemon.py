"""Run `gpumux serve` as a real subprocess against mock backends, and watch what it leaves.

Owns: writing a test config (free ports, a fake GPU ledger in a temp dir, `mock_vllm` run
with this interpreter), starting the daemon, waiting for readiness by polling with a
deadline, and stopping it with a real signal while recording every descendant pid so
tests can assert that nothing survives; reading its JSON log events; one chat
completion through it with the real openai SDK.
Does not: speak raw HTTP (`tests.support.client`), read metrics (`tests.support.metrics`)
or the mock backends' own routes (`tests.support.backend`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil

from tests.support.client import http_status
from tests.support.ports import free_port
from tests.support.procs import alive
from tests.support.waits import wait_until

READY_TIMEOUT_SECS = 30.0


def mock_model(**overrides: Any) -> dict[str, Any]:
    """A model entry served by mock_vllm on a free port."""
    extra = overrides.pop("extra_args", [])
    entry: dict[str, Any] = {
        "model_path": "mock/model",
        "port": free_port(),
        "extra_args": ["--gpu-memory-utilization", "0.9", "--mock-model-gib", "0.1", *extra],
    }
    entry.update(overrides)
    return entry


def daemon_config(tmp: Path, models: dict[str, dict[str, Any]], **top: Any) -> dict[str, Any]:
    # fifo: these tests exercise the daemon's mechanics under the simplest policy (the
    # default policy is measured in bench/policies.py and checked in tests/sim).
    policy: dict[str, Any] = {
        "policy_type": "fifo",
        "min_active_secs": 0,
        "drain_timeout_secs": 10,
        "request_timeout_secs": 30,
    }
    policy.update(top.pop("policy", {}))
    supervision = {"stop_grace_secs": 3, "restart_backoff_secs": 0.2, "shutdown_timeout_secs": 10}
    supervision.update(top.pop("supervision", {}))
    config: dict[str, Any] = {
        "models": models,
        "host": "127.0.0.1",
        "port": free_port(),
        "metrics_port": free_port(),
        "vllm_command": [sys.executable, "-m", "mock_vllm"],
        "state_dir": str(tmp / "state"),
        "gpu": {"probe": "fake", "fake_capacity_gib": [80], "sleeping_residual_gib": 0.5},
        "policy": policy,
        "supervision": supervision,
    }
    config.update(top)
    return config


class RunningDaemon:
    def __init__(self, process: subprocess.Popen[bytes], config: dict[str, Any], log_path: Path):
        self.process = process
        self.config = config
        self.log_path = log_path
        self.seen_pids: set[int] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config['port']}"

    @property
    def ledger_path(self) -> Path:
        return Path(self.config["state_dir"]) / "fake-gpu-ledger.json"

    def backend_url(self, model: str) -> str:
        return f"http://127.0.0.1:{self.config['models'][model]['port']}"

    def descendants(self) -> list[psutil.Process]:
        try:
            found = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        self.seen_pids.update(p.pid for p in found)
        return found

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue
        return events

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"gpumux exited early ({self.process.returncode}):\n{self.log_text()}"
                )
            if http_status(self.url + "/health") == 200:
                return
            time.sleep(0.05)
        raise AssertionError(f"gpumux not ready in {READY_TIMEOUT_SECS}s:\n{self.log_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.descendants()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def survivors(self, timeout: float = 5.0) -> list[int]:
        """Pids seen as descendants that still exist after `timeout` (zombies excluded)."""
        deadline = time.monotonic() + timeout
        alive_now = list(self.seen_pids)
        while time.monotonic() < deadline:
            alive_now = [p for p in self.seen_pids if alive(p)]
            if not alive_now:
                return []
            time.sleep(0.05)
        return alive_now


def start_daemon(
    tmp: Path, config: dict[str, Any], env: dict[str, str] | None = None
) -> RunningDaemon:
    tmp.mkdir(parents=True, exist_ok=True)
    config_path = tmp / "gpumux.json"
    config_path.write_text(json.dumps(config))
    log_path = tmp / "gpumux.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "gpumux", "serve", str(config_path), "--log-format", "json"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
        )
    return RunningDaemon(process, config, log_path)


@contextmanager
def running_daemon(
    tmp: Path, models: dict[str, dict[str, Any]], env: dict[str, str] | None = None, **top: Any
) -> Iterator[RunningDaemon]:
    daemon = start_daemon(tmp, daemon_config(tmp, models, **top), env)
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        if daemon.process.poll() is None:
            daemon.stop()
        leftover = daemon.survivors()
        for pid in leftover:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not leftover, f"processes survived gpumux: {leftover}"


def chat(
    daemon: RunningDaemon,
    model: str,
    text: str = "hello",
    *,
    max_tokens: int = 4,
    timeout: float = 30,
) -> str:
    """One chat completion through gpumux with the real openai SDK; its (non-empty) text."""
    import openai  # only the tests that chat pay for the SDK's import

    with openai.OpenAI(
        base_url=daemon.url + "/v1", api_key="unused", max_retries=0, timeout=timeout
    ) as sdk:
        reply = sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], max_tokens=max_tokens
        )
    content = reply.choices[0].message.content
    assert reply.model == model
    assert content
    return content


def events(daemon: RunningDaemon, name: str, **match: Any) -> list[dict[str, Any]]:
    """The daemon's JSON log events called `name` whose fields equal `match`, oldest first."""
    return [
        e
        for e in daemon.log_events()
        if e.get("event") == name and all(e.get(k) == v for k, v in match.items())
    ]


def wait_event(
    daemon: RunningDaemon, name: str, timeout: float = 20.0, **match: Any
) -> dict[str, Any]:
    """The newest log event `events` finds, once there is one (within `timeout`)."""
    found = wait_until(lambda: events(daemon, name, **match), f"log event {name}", timeout=timeout)
    return found[-1]
