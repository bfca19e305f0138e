"""Host-RAM pressure (ecosystem §4 case 27) through the real daemon.

Three 0.9-utilisation mock models share one fake 80 GiB GPU, each with 1 GiB of fake
weights, evicted with level-1 sleep (offload + keep_running), so every sleeper pins
1 GiB of host RAM. The fake probe gives the host `fake_host_memory_gib` of RAM minus
what the ledger says live sleepers hold, so pressure is exact and the test can sample
the host use every few milliseconds (`LedgerWatch.peak_host`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from gpumux.gpu.fake_ledger import book, release
from tests.support.backend import backend_events
from tests.support.daemon import RunningDaemon, chat, mock_model, running_daemon
from tests.support.ledger import LedgerWatch, ledger_host_bytes
from tests.support.metrics import metric_value
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration

GIB = 1024**3
HOST_GIB = 3.5
RESERVE_GIB = 1.0


def pinning_model(**overrides: Any) -> dict[str, Any]:
    return mock_model(extra_args=["--mock-model-gib", "1"], **overrides)


def host_top(**host_memory: Any) -> dict[str, Any]:
    return {
        "gpu": {
            "probe": "fake",
            "fake_capacity_gib": [80],
            "sleeping_residual_gib": 0.5,
            "fake_host_memory_gib": HOST_GIB,
        },
        "host_memory": {
            "reserve_gib": RESERVE_GIB,
            "check_interval_secs": 0.2,
            **host_memory,
        },
    }


def state_of(daemon: RunningDaemon, model: str, state: str) -> bool:
    return metric_value(daemon, "gpumux_model_state", model=model, state=state) == 1


def pressure_events(daemon: RunningDaemon) -> list[dict[str, Any]]:
    return [e for e in daemon.log_events() if e.get("event") == "host_memory_pressure"]


def test_oldest_level1_sleeper_is_stopped_before_a_new_pin_breaks_the_reserve(
    tmp_path: Path,
) -> None:
    """With each model's pin known (`host_memory_gib`), the third sleeper would leave
    0.5 GiB of 3.5: the oldest idle sleeper is stopped first, and the new one sleeps only
    once a reading shows that memory back. Host use never passes 3.5 - 1 GiB."""
    models = {m: pinning_model(host_memory_gib=1) for m in "abc"}
    with running_daemon(tmp_path, models, **host_top()) as daemon:
        with LedgerWatch(daemon) as watch:
            for model in "abca":
                assert chat(daemon, model)
        assert watch.samples > 0
        assert watch.peak_host <= (HOST_GIB - RESERVE_GIB) * GIB, watch.peak_host / GIB
        assert watch.peak_host == 2 * GIB  # two sleepers at most, never three
        # b was the oldest idle sleeper when c had to leave (a was the one being woken).
        assert state_of(daemon, "b", "stopped")
        assert state_of(daemon, "c", "sleeping")
        assert [e["model"] for e in pressure_events(daemon)] == ["b"]
        assert chat(daemon, "b")  # and b comes back with a cold start
        assert daemon.process.poll() is None


def test_a_victim_sleeps_at_level_2_when_no_older_sleeper_can_make_room(tmp_path: Path) -> None:
    """With 1.8 GiB of host RAM and a 1 GiB reserve, a level-1 sleep cannot fit and there
    is nobody to stop: the victim is put to sleep at level 2 (weights discarded), and its
    next wake reloads the weights."""
    models = {m: pinning_model(host_memory_gib=1) for m in "ab"}
    top = host_top()
    top["gpu"]["fake_host_memory_gib"] = 1.8
    with running_daemon(tmp_path, models, **top) as daemon:
        assert chat(daemon, "a")
        assert chat(daemon, "b")
        assert state_of(daemon, "a", "sleeping")
        assert ledger_host_bytes(daemon) == 0
        downgrades = [e for e in daemon.log_events() if e.get("event") == "host_memory_downgrade"]
        assert [e["model"] for e in downgrades] == ["a"]
        sleeps = [e["level"] for e in backend_events(daemon, "a") if e["event"] == "sleep"]
        assert sleeps == [2]
        assert chat(daemon, "a")
        rpcs = [e["method"] for e in backend_events(daemon, "a") if e["event"] == "collective_rpc"]
        assert rpcs == ["reload_weights"]


def test_host_memory_taken_by_someone_else_stops_the_oldest_sleeper(tmp_path: Path) -> None:
    """Without estimates the reading guard acts alone: another process takes host RAM,
    the reading drops below the reserve, and the oldest level-1 sleeper is stopped (one,
    since the next reading is back above the reserve); the awake model is untouched."""
    models = {m: pinning_model() for m in "abc"}
    with running_daemon(tmp_path, models, **host_top()) as daemon:
        for model in "abc":
            assert chat(daemon, model)
        wait_until(lambda: ledger_host_bytes(daemon) == 2 * GIB, what="two level-1 sleepers")
        # A foreign process (this test) takes 1 GiB: 3.5 - 2 - 1 = 0.5 GiB < the reserve.
        book(daemon.ledger_path, os.getpid(), {}, model="foreign", state="awake", host_bytes=GIB)
        try:
            wait_until(lambda: state_of(daemon, "a", "stopped"), timeout=15, what="a stopped")
            assert state_of(daemon, "b", "sleeping")
            assert state_of(daemon, "c", "ready")
            events = pressure_events(daemon)
            assert [e["model"] for e in events] == ["a"]
            assert events[0]["why"] == "host memory below the reserve"
        finally:
            release(daemon.ledger_path, os.getpid())
        assert chat(daemon, "c")
        assert daemon.process.poll() is None
