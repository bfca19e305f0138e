"""The daemon part of the check: real `gpumux serve`, one model per strategy, many switches.

Owns: starting the daemon on the plan's config, sending completions round-robin through
the proxy (any three models fit, so every request for a fourth evicts the least recently
used one: three rounds evict and wake every model at least twice), reading back each
answer's weights checksum, snapshotting model states and per-process GPU memory after
every request, collecting the backends' own copy timings, then SIGTERM and a search for
anything left behind (processes, and GPU memory held by their pids).
Does not: interpret timings (`timings`) or write files (`report`).
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.client import get_json
from tests.support.daemon import RunningDaemon, start_daemon
from tests.support.gpu_check.plan import Plan
from tests.support.gpu_check.sampler import Ledger, Nvml

CHECKSUM = re.compile(r"\[weights ([0-9a-f]{16})\]")
REQUEST_TIMEOUT_SECS = 600.0


@dataclass
class Run:
    answers: list[dict[str, Any]] = field(default_factory=list)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    backend_ops: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None
    survivors: list[int] = field(default_factory=list)
    gpu_leftovers: dict[int, int] = field(default_factory=dict)
    stopped_out_of_time: bool = False
    error: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


def complete(daemon: RunningDaemon, alias: str) -> dict[str, Any]:
    body = {"model": alias, "prompt": "gpu check", "max_tokens": 2}
    request = urllib.request.Request(
        daemon.url + "/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECS) as response:
            text = json.loads(response.read())["choices"][0]["text"]
            status = response.status
    except urllib.error.HTTPError as exc:
        text, status = exc.read().decode(errors="replace")[:300], exc.code
    except (OSError, ValueError, KeyError) as exc:
        text, status = f"{type(exc).__name__}: {exc}", 0
    found = CHECKSUM.search(text)
    return {
        "model": alias,
        "status": status,
        "secs": round(time.monotonic() - started, 3),
        "text": text,
        "checksum": found.group(1) if found else None,
    }


def snapshot(daemon: RunningDaemon, gpu: Nvml | Ledger, index: int) -> dict[str, Any]:
    admin = f"http://127.0.0.1:{daemon.config['admin_port']}/api/status"
    models = get_json(admin)["models"]
    used = gpu.processes()
    return {
        "after_request": index,
        "states": {alias: m["state"] for alias, m in models.items()},
        "gpu_bytes": {alias: used.get(m["pid"] or -1, 0) for alias, m in models.items()},
        "pids": {alias: m["pid"] for alias, m in models.items()},
    }


def backend_ops(daemon: RunningDaemon, aliases: list[str]) -> dict[str, Any]:
    """Each live backend's own record of its device operations (torch mode only)."""
    out: dict[str, Any] = {}
    for alias in aliases:
        try:
            state = get_json(daemon.backend_url(alias) + "/mock/state", timeout=5)
        except (OSError, ValueError):
            continue  # stopped or checkpointed: no process to ask
        device = state.get("device")
        out[alias] = device["ops"] if device else None
    return out


def run(plan: Plan, gpu: Nvml | Ledger, rounds: int, deadline: float, work: Path) -> Run:
    result = Run()
    order = [s.alias for s in plan.strategies] * rounds
    result.config = plan.config()
    daemon = start_daemon(work / "daemon", result.config)
    try:
        daemon.wait_ready()
        for index, alias in enumerate(order):
            if time.monotonic() > deadline:
                result.stopped_out_of_time = True
                break
            answer = complete(daemon, alias)
            result.answers.append(answer)
            print(f"gpu-check: {alias}: HTTP {answer['status']} in {answer['secs']} s "
                  f"{answer['checksum'] or answer['text'][:60]!r}", flush=True)  # fmt: skip
            result.snapshots.append(snapshot(daemon, gpu, index))
            daemon.descendants()  # remember every pid for the leftover check
        result.backend_ops = backend_ops(daemon, [s.alias for s in plan.strategies])
    except Exception as exc:  # reported, then the daemon is still stopped and swept
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        result.exit_code = daemon.stop(timeout=120) if daemon.process.poll() is None else (
            daemon.process.returncode
        )  # fmt: skip
        result.survivors = daemon.survivors(timeout=15)
        seen = daemon.seen_pids
        result.gpu_leftovers = {p: b for p, b in gpu.processes().items() if p in seen}
        result.events = daemon.log_events()
    return result
