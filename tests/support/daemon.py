"""Run `gpumux serve` as a real subprocess against mock backends, and watch what it leaves.

Owns: writing a test config (free ports, a fake GPU ledger in a temp dir, `mock_vllm` run
with this interpreter), starting the daemon, waiting for readiness by polling with a
deadline, and stopping it with a real signal while recording every descendant pid so
tests can assert that nothing survives.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil

READY_TIMEOUT_SECS = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
    policy = {"min_active_secs": 0, "drain_timeout_secs": 10, "request_timeout_secs": 30}
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
        alive = list(self.seen_pids)
        while time.monotonic() < deadline:
            alive = [p for p in self.seen_pids if _alive(p)]
            if not alive:
                return []
            time.sleep(0.05)
        return alive


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """GET `url`; its status, or None when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response's socket (a 503 while the daemon starts)
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


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


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def post_json(url: str, body: dict[str, Any], timeout: float = 5.0) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy, within a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def metric_value(daemon: RunningDaemon, name: str, **labels: str) -> float:
    """The value of one gpumux metric series (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.config['metrics_port']}/metrics") as r:
        text = r.read().decode()
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


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
