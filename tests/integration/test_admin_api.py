"""The admin API against the real daemon: auth, status, commands, SSE, logs, chat, CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gpumux.admin.openapi import openapi_document
from tests.support.admin import Admin, EventStream
from tests.support.client import assert_error_shape, chat_body, http_status
from tests.support.daemon import daemon_config, mock_model, running_daemon, start_daemon
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

TOKEN = "admin-token-7f3a"
API_KEY = "api-key-91c2"
ENV = {"GPUMUX_TEST_ADMIN": TOKEN, "GPUMUX_TEST_KEYS": API_KEY}


def admin_daemon(tmp_path: Path, models: dict[str, Any] | None = None, **top: Any) -> Any:
    models = models or {"a": mock_model(), "b": mock_model()}
    return running_daemon(
        tmp_path,
        models,
        env=ENV,
        admin_port=free_port(),
        admin_token_env="GPUMUX_TEST_ADMIN",
        api_keys_env="GPUMUX_TEST_KEYS",
        **top,
    )


def test_auth_401_403_and_api_keys_do_not_open_it(tmp_path: Path) -> None:
    """No token 401, wrong token 403, an API key is not an admin token; openapi is open."""
    with admin_daemon(tmp_path) as daemon:
        admin = Admin(daemon, TOKEN)
        code, body = admin.get("/api/status", token=None)
        assert code == 401
        assert_error_shape(body, "missing_admin_token")
        code, body = admin.get("/api/status", token="wrong")
        assert code == 403
        assert_error_shape(body, "invalid_admin_token")
        assert admin.get("/api/status", token=API_KEY)[0] == 403
        assert admin.post("/api/switch", {"model": "a"}, token=None)[0] == 401
        assert admin.get("/api/status")[0] == 200
        assert admin.get("/api/openapi.json", token=None)[0] == 200
        code, page = admin.get("/", token=None)
        assert code == 200
        assert b"<title>gpumux</title>" in page


def test_status_switch_phases_and_model_actions(tmp_path: Path) -> None:
    """A forced switch returns phases and duration; evict, wake, restart, reset, mode, logs."""
    with admin_daemon(tmp_path) as daemon:
        admin = Admin(daemon, TOKEN)
        status = admin.status()
        assert set(status["models"]) == {"a", "b"}
        assert status["models"]["a"]["state"] == "stopped"
        assert status["mode"] == "auto"
        assert {"gpus", "host_memory"} <= set(status["resources"])
        assert status["host_budget"] == {
            "reserve_bytes": 2 * 1024**3,
            "pin_estimate_bytes": {"a": None, "b": None},  # nothing measured yet
            "pinned_now_bytes": {"a": 0, "b": 0},  # nothing pinned: nobody slept yet
            "level1_backup": [],
        }
        assert "ops" in status["costs"]

        code, reply = admin.post("/api/switch", {"model": "a"})
        assert code == 200, reply
        assert reply["ok"] is True
        assert reply["duration_s"] > 0
        assert "start" in reply["phases"]
        code, reply = admin.post("/api/switch", {"model": "b"})
        assert code == 200, reply
        assert reply["victims"] == ["a"]
        assert {"sleep", "start"} <= set(reply["phases"])

        status = admin.status()
        assert status["models"]["b"]["state"] == "ready"
        assert status["models"]["b"]["pid"]
        assert status["models"]["a"]["state"] == "sleeping"
        assert status["models"]["b"]["last_switch"]["victims"] == ["a"]

        code, body = admin.post("/api/models/a/evict")
        assert code == 409
        assert_error_shape(body, "model_busy")
        assert admin.post("/api/models/a/wake")[0] == 200
        assert admin.status()["models"]["a"]["state"] == "ready"
        assert admin.post("/api/models/a/evict")[0] == 200
        assert admin.post("/api/models/b/restart")[0] == 200
        assert admin.post("/api/models/b/reset")[0] == 200
        assert admin.post("/api/models/b/explode")[0] == 404
        code, body = admin.post("/api/models/nope/wake")
        assert code == 404
        assert_error_shape(body, "model_not_found")
        code, body = admin.call("POST", "/api/switch", b"{not json")
        assert code == 400
        assert_error_shape(body, "invalid_json")

        code, reply = admin.post("/api/mode", {"mode": "manual", "model": "a"})
        assert code == 200, reply
        status = admin.status()
        assert (status["mode"], status["pinned"]) == ("manual", "a")
        assert admin.post("/api/mode", {"mode": "auto"})[0] == 200
        assert admin.status()["mode"] == "auto"
        assert admin.post("/api/mode", {"mode": "sideways"})[0] == 400

        code, logs = admin.get("/api/logs/a?lines=5")
        assert code == 200
        assert 0 < len(logs["lines"]) <= 5
        assert admin.get("/api/logs/nope")[0] == 404


def test_concurrent_forced_switches_are_serialised(tmp_path: Path) -> None:
    """Two forced switches at once both succeed, one after the other, never overlapping."""
    with admin_daemon(tmp_path) as daemon:
        admin = Admin(daemon, TOKEN)
        replies: dict[str, Any] = {}
        threads = [
            threading.Thread(
                target=lambda m=m: replies.__setitem__(m, admin.post("/api/switch", {"model": m}))
            )
            for m in ("a", "b")
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert replies["a"][0] == 200, replies
        assert replies["b"][0] == 200, replies
        first, second = sorted(("a", "b"), key=lambda m: replies[m][1]["switch_id"])
        assert replies[second][1]["victims"] == [first]  # the second evicted the first
        awake = [m for m, s in admin.status()["models"].items() if s["state"] == "ready"]
        assert awake == [second]


def test_events_replay_then_follow_live(tmp_path: Path) -> None:
    """SSE replays history, follows live switches, and resumes after Last-Event-ID."""
    with admin_daemon(tmp_path) as daemon:
        admin = Admin(daemon, TOKEN)
        assert admin.post("/api/switch", {"model": "a"})[0] == 200
        stream = EventStream(admin)
        try:
            seq, event = stream.wait_for(lambda e: e["event"] == "switch_finished")
            assert event["target"] == "a"  # replayed
            done = threading.Event()
            threading.Thread(
                target=lambda: (admin.post("/api/switch", {"model": "b"}), done.set())
            ).start()
            live_seq, live = stream.wait_for(
                lambda e: e["event"] == "switch_finished" and e["target"] == "b"
            )
            assert live_seq > seq
            assert live["victims"] == ["a"]
            done.wait(30)
        finally:
            stream.close()
        resumed = EventStream(admin, last_event_id=live_seq)
        try:
            assert all(s > live_seq for s, _ in resumed.frames(0.5))
        finally:
            resumed.close()


def test_chat_route_streams_through_the_proxy_with_the_api_key(tmp_path: Path) -> None:
    """POST /api/chat forwards to the proxy; the pasted API key becomes its bearer."""
    slow = ["--mock-tokens-per-sec", "40"]
    with admin_daemon(tmp_path, {"a": mock_model(extra_args=slow)}) as daemon:
        admin = Admin(daemon, TOKEN)
        body = json.loads(chat_body("a", stream=True, max_tokens=6))
        code, payload = admin.post("/api/chat", body)
        assert code == 401  # no API key: the proxy refused, and we see its answer
        assert_error_shape(payload, "invalid_api_key")
        code, payload = admin.post("/api/chat", body, headers={"X-Gpumux-Api-Key": API_KEY})
        assert code == 200
        assert payload.count(b"data: ") >= 6
        assert payload.endswith(b"data: [DONE]\n\n")
        code, payload = admin.post("/api/chat", {"messages": []})
        assert code == 400


def test_openapi_lists_exactly_the_routes_served(tmp_path: Path) -> None:
    """Every route the app serves is described, and nothing else is."""
    with admin_daemon(tmp_path) as daemon:
        admin = Admin(daemon, TOKEN)
        code, served = admin.get("/api/openapi.json", token=None)
    assert code == 200
    assert served == openapi_document()
    from gpumux.admin.api import DASHBOARD_FILES

    pages = {"/" if n == "index.html" else f"/{n}" for n in DASHBOARD_FILES}
    api = {
        "/api/openapi.json",
        "/api/status",
        "/api/node",
        "/api/switch",
        "/api/models/{model}/{action}",
        "/api/mode",
        "/api/events",
        "/api/logs/{model}",
        "/api/requests",
        "/api/chat",
    }
    assert set(served["paths"]) == pages | api


def test_cli_status_and_switch(tmp_path: Path) -> None:
    """`gpumux status` prints the table; `gpumux switch` prints phases and duration."""
    with admin_daemon(tmp_path):
        config_path = str(tmp_path / "gpumux.json")
        env = {"PATH": "/usr/bin:/bin", **ENV}

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "gpumux", *args, "--config", config_path],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
                check=False,
            )

        switched = cli("switch", "b")
        assert switched.returncode == 0, switched.stderr
        assert "`b` is ready" in switched.stdout
        assert "start" in switched.stdout
        status = cli("status")
        assert status.returncode == 0, status.stderr
        header, *rows = status.stdout.splitlines()
        assert header.split()[:4] == ["MODEL", "STATE", "QUEUE", "IN-FLIGHT"]
        assert any(r.split()[:2] == ["b", "ready"] for r in rows)
        missing = cli("switch", "zzz")
        assert missing.returncode == 1
        assert "does not exist" in missing.stderr
        env.pop("GPUMUX_TEST_ADMIN")
        assert "HTTP 401" in cli("status").stderr


def test_unset_token_variable_or_open_non_loopback_bind_refuse_to_start(tmp_path: Path) -> None:
    """A named-but-unset token, or a non-loopback admin bind without one: exit 2, no bind."""
    config = daemon_config(
        tmp_path, {"a": mock_model()}, admin_port=free_port(), admin_token_env="GPUMUX_UNSET"
    )
    daemon = start_daemon(tmp_path / "one", config)
    assert daemon.process.wait(timeout=20) == 2
    assert "GPUMUX_UNSET" in daemon.log_text()
    assert http_status(daemon.url + "/health") is None  # refused before binding

    exposed = daemon_config(tmp_path, {"a": mock_model()}, admin_port=free_port())
    exposed["admin_host"] = "0.0.0.0"
    daemon = start_daemon(tmp_path / "two", exposed)
    assert daemon.process.wait(timeout=20) == 2
    assert "admin_host" in daemon.log_text()


def test_an_open_event_stream_does_not_hold_up_shutdown(tmp_path: Path) -> None:
    """SIGTERM ends live SSE streams; the daemon exits 0 promptly."""
    with admin_daemon(tmp_path, {"a": mock_model()}) as daemon:
        stream = EventStream(Admin(daemon, TOKEN))
        try:
            started = time.monotonic()
            daemon.process.send_signal(signal.SIGTERM)
            assert daemon.process.wait(timeout=15) == 0
            assert time.monotonic() - started < 10
            assert list(stream.frames(2.0)) is not None  # the stream ended, no hang
        finally:
            stream.close()
