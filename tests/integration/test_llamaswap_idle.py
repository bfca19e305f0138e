"""Idle TTLs through the real daemon: a ladder walked step by step, reads that never reset
the timer (health checks, backend metric scrapes, admin status), and a reload that adds a
TTL to a running model without restarting it."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.admin import Admin
from tests.support.client import chat_body, post
from tests.support.daemon import mock_model, running_daemon
from tests.support.ports import free_port
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration

SMALL = ["--gpu-memory-utilization", "0.3"]
LADDER = [
    {"after_secs": 1.5, "eviction": {"weights": "offload", "process": "keep_running"}},
    {"after_secs": 4.0, "eviction": {"weights": "discard", "process": "stop"}},
]


def state(admin: Admin, model: str) -> str:
    result: str = admin.status()["models"][model]["state"]
    return result


@pytest.mark.timeout(90)
def test_the_idle_ladder_runs_and_reads_never_reset_it(tmp_path: Path) -> None:
    models = {"a": mock_model(extra_args=SMALL, idle=LADDER), "b": mock_model(extra_args=SMALL)}
    with running_daemon(
        tmp_path, models, admin_port=free_port(), supervision={"health_interval_secs": 0.2}
    ) as daemon:
        admin = Admin(daemon)
        assert post(daemon, "/v1/chat/completions", chat_body("a")).status == 200
        last_use = time.monotonic()
        idle = admin.status()["models"]["a"]["idle"]
        assert [s["eviction"] for s in idle["ladder"]] == [
            "offload+keep_running",
            "discard+stop",
        ]
        assert 0 < idle["next_step_in_s"] <= 1.5
        scrape = f"http://127.0.0.1:{daemon.config['metrics_port']}/metrics/backends"
        while state(admin, "a") == "ready":  # reads and scrapes all the while
            with urllib.request.urlopen(scrape, timeout=5) as response:
                response.read()
            assert time.monotonic() - last_use < 5, "the TTL never fired"
            time.sleep(0.1)
        slept_after = time.monotonic() - last_use
        assert 1.4 <= slept_after < 3.5
        wait_until(lambda: state(admin, "a") == "sleeping", what="a asleep")
        wait_until(lambda: state(admin, "a") == "stopped", timeout=10, what="a stopped")
        assert time.monotonic() - last_use >= 3.9
        events = [e for e in daemon.log_events() if e["event"] == "idle_evict"]
        assert [e["eviction"] for e in events] == ["offload+keep_running", "discard+stop"]
        assert state(admin, "b") == "stopped"  # no TTL, never used: untouched

        # A used model with no TTL gets one by SIGHUP, in place.
        assert post(daemon, "/v1/chat/completions", chat_body("b")).status == 200
        pid = admin.status()["models"]["b"]["pid"]
        config_path = tmp_path / "gpumux.json"
        config: dict[str, Any] = json.loads(config_path.read_text())
        config["models"]["b"]["ttl_secs"] = 1
        config_path.write_text(json.dumps(config))
        daemon.process.send_signal(signal.SIGHUP)
        wait_until(lambda: state(admin, "b") == "sleeping", timeout=15, what="b's new TTL")
        assert admin.status()["models"]["b"]["pid"] == pid  # slept, never restarted
        reload = [e for e in daemon.log_events() if e["event"] == "config_reloaded"][-1]
        assert reload["retuned"] == ["b"]
        assert reload["changed"] == []
