"""Preload and pins through the real daemon: models up at start in order, a pinned model
never a victim, evict with force, pin/unpin at run time, and a SIGHUP that changes pins
without restarting anyone."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.support.admin import Admin
from tests.support.client import chat_body, post
from tests.support.daemon import mock_model, running_daemon
from tests.support.ports import free_port
from tests.support.waits import wait_until


def util(share: float) -> list[str]:
    return ["--gpu-memory-utilization", str(share)]


pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_preload_pins_force_evict_and_reload(tmp_path: Path) -> None:
    models = {
        "a": mock_model(extra_args=util(0.3), pinned=True, aliases=["alpha"]),
        "b": mock_model(extra_args=util(0.3)),
        "c": mock_model(extra_args=util(0.5)),
    }
    with running_daemon(tmp_path, models, admin_port=free_port(), preload=["alpha", "b"]) as daemon:
        admin = Admin(daemon)

        def states() -> dict[str, str]:
            return {m: s["state"] for m, s in admin.status()["models"].items()}

        wait_until(lambda: states() == {"a": "ready", "b": "ready", "c": "stopped"}, timeout=20)
        status = admin.status()
        assert status["preload"] == {"a": "started", "b": "started"}
        assert status["pins"] == ["a"]
        assert status["models"]["a"]["pinned"] is True

        # c needs room: b (not pinned) leaves, a stays.
        assert post(daemon, "/v1/chat/completions", chat_body("c")).status == 200
        assert states() == {"a": "ready", "b": "sleeping", "c": "ready"}

        code, body = admin.post("/api/models/a/evict")
        assert code == 409
        assert "force" in body["error"]["message"]
        assert admin.post("/api/models/a/evict", {"force": True})[0] == 200
        wait_until(lambda: states()["a"] == "sleeping", what="a evicted by force")

        assert admin.post("/api/models/b/pin")[0] == 200
        code, body = admin.post("/api/models/c/pin")  # 0.3 + 0.3 + 0.5 > 1 on GPU 0
        assert code == 400
        assert "cannot be awake together" in body["error"]["message"]
        assert admin.post("/api/models/a/unpin")[0] == 200
        assert admin.status()["pins"] == ["b"]

        pids = {m: s["pid"] for m, s in admin.status()["models"].items()}
        config_path = tmp_path / "gpumux.json"
        config: dict[str, Any] = json.loads(config_path.read_text())
        config["models"]["a"]["pinned"] = False
        config["models"]["c"]["pinned"] = True
        config_path.write_text(json.dumps(config))
        daemon.process.send_signal(signal.SIGHUP)
        wait_until(lambda: admin.status()["pins"] == ["b", "c"], what="pins reloaded")
        assert {m: s["pid"] for m, s in admin.status()["models"].items()} == pids
