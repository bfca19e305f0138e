"""One real daemon's fleet surface: `GET /api/node`, the agent port and `/metrics/epp`.

Reading any of them never wakes a model, takes a lease or changes a state; the agent
answers from the node status and turns to `maint` once the daemon begins shutting down.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.client import get_json
from tests.support.daemon import RunningDaemon, chat, mock_model, running_daemon
from tests.support.metrics import metric_value
from tests.support.ports import free_port
from tests.support.waits import wait_until

pytestmark = pytest.mark.fleet

TOKEN = "fleet-admin-token"
ENV = {"GPUMUX_FLEET_TOKEN": TOKEN}
SMALL = ["--gpu-memory-utilization", "0.3"]


def ask_agent(daemon: RunningDaemon, line: str) -> str:
    with socket.create_connection(("127.0.0.1", daemon.config["agent_port"]), timeout=5) as sock:
        sock.sendall(line.encode() + b"\n")
        reply = b""
        while chunk := sock.recv(1024):
            reply += chunk
    return reply.decode()


def admin_get(daemon: RunningDaemon, path: str) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{daemon.config['admin_port']}{path}",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def epp(daemon: RunningDaemon) -> dict[str, tuple[dict[str, str], float]]:
    url = f"http://127.0.0.1:{daemon.config['metrics_port']}/metrics/epp"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        s.name: (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def state_changes(daemon: RunningDaemon) -> int:
    return sum(1 for e in daemon.log_events() if e.get("event") == "state_changed")


def test_reading_changes_nothing_and_the_agent_says_maint_once_shutting_down(
    tmp_path: Path,
) -> None:
    models = {
        "a": mock_model(extra_args=SMALL),
        "b": mock_model(extra_args=[*SMALL, "--mock-tokens-per-sec", "10"]),
    }
    top = {
        "agent_port": free_port(),
        "admin_port": free_port(),
        "admin_token_env": "GPUMUX_FLEET_TOKEN",
    }
    with running_daemon(tmp_path, models, env=ENV, **top) as daemon:
        chat(daemon, "a")
        request = urllib.request.Request(
            f"http://127.0.0.1:{top['admin_port']}/api/models/a/evict",
            data=b"{}",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())["ok"]
        wait_until(lambda: admin_get(daemon, "/api/node")["models"]["a"]["state"] == "sleeping")
        changes, served = state_changes(daemon), metric_value(daemon, "gpumux_requests_total")

        for _ in range(10):
            node = admin_get(daemon, "/api/node")
            assert ask_agent(daemon, "a awake") == "drain\n"
            assert ask_agent(daemon, "a asleep").startswith("up ready ")
            assert ask_agent(daemon, "b").startswith("up ready ")  # cold, and it fits
            assert ask_agent(daemon, "b asleep") == "drain\n"
            assert ask_agent(daemon, "nope") == "maint\n"
            assert ask_agent(daemon, "a sideways") == "maint\n"
            epp(daemon)
        assert node["state"] == "serving"
        assert node["models"]["a"] | {"wake_cost_secs": None} == {
            "state": "sleeping",
            "queue_depth": 0,
            "inflight": 0,
            "max_concurrency": 256,
            "saturated": False,
            "wake_cost_secs": None,
            "can_host_now": True,
            "blocked": None,
            "can_queue": True,
        }
        assert node["models"]["b"]["state"] == "stopped"
        assert state_changes(daemon) == changes  # nothing woke, nothing moved
        assert metric_value(daemon, "gpumux_requests_total") == served  # no request, no lease
        assert admin_get(daemon, "/api/status")["models"]["a"]["state"] == "sleeping"
        with pytest.raises(urllib.error.HTTPError) as refused:  # token-protected like the rest
            get_json(f"http://127.0.0.1:{top['admin_port']}/api/node")
        assert refused.value.code == 401
        refused.value.close()  # it holds the response's socket

        # A 4-second answer from b keeps the daemon draining after SIGTERM.
        worker = threading.Thread(target=lambda: chat(daemon, "b", max_tokens=40, timeout=30))
        worker.start()
        wait_until(lambda: admin_get(daemon, "/api/node")["models"]["b"]["inflight"] == 1)
        found = epp(daemon)
        assert found["vllm:lora_requests_info"][0]["running_lora_adapters"] == "b"
        assert found["vllm:num_requests_running"] == ({}, 1)
        assert ask_agent(daemon, "b awake") == "up ready 100%\n"
        daemon.process.send_signal(signal.SIGTERM)
        wait_until(lambda: ask_agent(daemon, "b awake") == "maint\n", what="maint while draining")
        worker.join(timeout=30)
        assert daemon.process.wait(timeout=30) == 0
