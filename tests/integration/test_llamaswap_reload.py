"""One SIGHUP that adds and removes aliases, pins and TTLs at once: applied in place (no
model restarts), and an untouched model keeps streaming through it."""

from __future__ import annotations

import itertools
import json
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.support.admin import Admin
from tests.support.client import chat_body, model_ids, post, stream_times
from tests.support.daemon import mock_model, running_daemon
from tests.support.ports import free_port
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration

SMALL = ["--gpu-memory-utilization", "0.3"]  # three fit on the fake 80 GiB GPU at once


@pytest.mark.timeout(120)
def test_sighup_adds_and_removes_aliases_pins_and_ttls_in_place(tmp_path: Path) -> None:
    models = {
        "keep": mock_model(extra_args=[*SMALL, "--mock-tokens-per-sec", "20"]),
        "p": mock_model(extra_args=SMALL, aliases=["old-name"], pinned=True, ttl_secs=600),
        "q": mock_model(extra_args=SMALL),
    }
    with running_daemon(tmp_path, models, admin_port=free_port()) as daemon:
        admin = Admin(daemon)
        for model in models:
            assert post(daemon, "/v1/chat/completions", chat_body(model)).status == 200
        before = admin.status()["models"]
        assert admin.status()["pins"] == ["p"]
        chunks: list[Any] = []
        streaming = threading.Thread(
            target=stream_times,
            args=(daemon.config["port"], chat_body("keep", stream=True, max_tokens=40), chunks),
        )
        streaming.start()
        wait_until(lambda: len(chunks) > 3, what="stream under way")

        config_path = tmp_path / "gpumux.json"
        config = json.loads(config_path.read_text())
        p, q = config["models"]["p"], config["models"]["q"]
        del p["aliases"], p["pinned"], p["ttl_secs"]
        q.update(aliases=["new-name"], pinned=True, ttl_secs=1)
        config_path.write_text(json.dumps(config))
        daemon.process.send_signal(signal.SIGHUP)

        wait_until(lambda: "new-name" in model_ids(daemon), what="new alias listed")
        assert "old-name" not in model_ids(daemon)
        assert post(daemon, "/v1/chat/completions", chat_body("old-name")).status == 404
        assert post(daemon, "/v1/chat/completions", chat_body("new-name")).json()["model"] == "q"
        status = admin.status()
        assert status["pins"] == ["q"]
        assert status["models"]["p"]["idle"]["ladder"] == []
        assert status["models"]["q"]["idle"]["ladder"][0]["after_secs"] == 1
        after = status["models"]
        assert {m: after[m]["pid"] for m in models} == {m: before[m]["pid"] for m in models}
        reload = [e for e in daemon.log_events() if e["event"] == "config_reloaded"][-1]
        assert reload["changed"] == []
        assert sorted(reload["retuned"]) == ["p", "q"]

        streaming.join(timeout=30)
        assert chunks[0] == 200
        assert chunks[-1][1].endswith(b"data: [DONE]\n\n")
        gaps = [b - a for a, b in itertools.pairwise(t for t, _ in chunks[1:])]
        assert max(gaps) < 0.5  # no stall across the reload
