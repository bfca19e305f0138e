"""The mock vLLM backend (`mock_vllm`) seen from a test: its `/mock/*` routes and its start.

Owns: through a running daemon, the backend's state (pids, sleep state, counts), the
events it recorded (every dev-route call, request and fault), the dev-route calls as
compact strings in order (`control_calls`), its fault knobs, and how often the daemon
spawned it; and, for the tests that run `mock_vllm` without a daemon, an async wait for
its `/health` and an async chat straight at it.
Does not: start or stop backends (the daemon, or the test's own fixture, does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp

from tests.support.client import CHAT, get_json, post_json
from tests.support.daemon import RunningDaemon

READY_TIMEOUT_SECS = 15.0


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


def control_calls(daemon: RunningDaemon, model: str) -> list[str]:
    """The dev-route calls a backend received and its CUDA suspends, in order, compactly:
    `sleep:LEVEL:MODE`, `wake_up:TAGS` (`all` without tags), `rpc:METHOD`,
    `reset_prefix_cache`, `cuda_suspended`, `cuda_resumed`."""
    calls = []
    for e in backend_events(daemon, model):
        if e["event"] == "sleep":
            calls.append(f"sleep:{e['level']}:{e['mode']}")
        elif e["event"] == "wake_up":
            calls.append("wake_up:" + ",".join(e.get("tags") or ["all"]))
        elif e["event"] == "collective_rpc":
            calls.append(f"rpc:{e['method']}")
        elif e["event"] in ("reset_prefix_cache", "cuda_suspended", "cuda_resumed"):
            calls.append(e["event"])
    return calls


def set_faults(daemon: RunningDaemon, model: str, **knobs: Any) -> None:
    """Turn mock fault knobs on at runtime (`POST /mock/faults`)."""
    post_json(daemon.backend_url(model) + "/mock/faults", knobs)


def spawn_count(daemon: RunningDaemon, model: str) -> int:
    """How many times the daemon spawned `model`'s backend (from its JSON log)."""
    return sum(
        1
        for e in daemon.log_events()
        if e.get("event") == "process_spawned" and e.get("model") == model
    )


# ---- a mock_vllm run without a daemon (async, for tests on an event loop) ----------------


async def wait_backend_healthy(
    session: aiohttp.ClientSession,
    base_url: str,
    *,
    gone: Callable[[], str | None],
    timeout: float = READY_TIMEOUT_SECS,
) -> None:
    """Poll `base_url/health` until it answers 200. `gone()` says why the backend can no
    longer answer (it exited, with its log), or None while it runs."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        why = gone()
        if why is not None:
            raise AssertionError(why)
        try:
            async with session.get(base_url + "/health") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"the mock at {base_url} was not healthy within {timeout:g}s")


async def mock_chat(
    session: aiohttp.ClientSession, base_url: str, content: str = "hi", **extra: Any
) -> tuple[int, dict[str, Any]]:
    """One chat completion straight at a mock backend serving `tiny`: (status, JSON)."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": content}], **extra}
    async with session.post(base_url + CHAT, json=body) as resp:
        reply: dict[str, Any] = await resp.json()
        return resp.status, reply
