"""SIGHUP against the real daemon: models added, removed and changed; the rest never blips."""

from __future__ import annotations

import itertools
import json
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.support.admin import Admin
from tests.support.client import (
    CHAT,
    assert_openai_error,
    chat_body,
    model_ids,
    post,
    stream_times,
)
from tests.support.daemon import mock_model, running_daemon
from tests.support.ports import free_port
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration

SMALL = ["--gpu-memory-utilization", "0.3"]  # three fit on the fake 80 GiB GPU at once


def test_sighup_adds_removes_restarts_and_leaves_the_rest_serving(tmp_path: Path) -> None:
    slow = [*SMALL, "--mock-tokens-per-sec", "20"]
    models = {
        "keep": mock_model(extra_args=slow),
        "drop": mock_model(extra_args=SMALL),
        "change": mock_model(extra_args=SMALL),
    }
    with running_daemon(tmp_path, models, admin_port=free_port()) as daemon:
        admin = Admin(daemon)
        for model in models:
            assert post(daemon, "/v1/chat/completions", chat_body(model)).status == 200
        before = admin.status()["models"]
        assert {m["state"] for m in before.values()} == {"ready"}

        chunks: list[Any] = []
        streaming = threading.Thread(
            target=stream_times,
            args=(daemon.config["port"], chat_body("keep", stream=True, max_tokens=40), chunks),
        )
        streaming.start()
        wait_until(lambda: len(chunks) > 3, what="stream under way")

        config_path = tmp_path / "gpumux.json"
        config = json.loads(config_path.read_text())
        del config["models"]["drop"]
        config["models"]["add"] = mock_model(extra_args=SMALL)
        config["models"]["change"]["extra_args"] += ["--mock-tokens-per-sec", "500"]
        config_path.write_text(json.dumps(config))
        daemon.process.send_signal(signal.SIGHUP)

        wait_until(lambda: model_ids(daemon) == {"keep", "change", "add"}, what="/v1/models")
        assert_openai_error(post(daemon, CHAT, chat_body("drop")), 404, "model_not_found")
        wait_until(lambda: "drop" not in admin.status()["models"], what="drop's slot dropped")
        assert post(daemon, "/v1/chat/completions", chat_body("add")).status == 200
        assert post(daemon, "/v1/chat/completions", chat_body("change")).status == 200
        after = admin.status()["models"]
        assert after["change"]["pid"] != before["change"]["pid"]  # restarted
        assert after["keep"]["pid"] == before["keep"]["pid"]  # untouched

        streaming.join(timeout=30)
        assert chunks[0] == 200
        assert chunks[-1][1].endswith(b"data: [DONE]\n\n")
        arrivals = [t for t, _ in chunks[1:]]
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        assert max(gaps) < 0.5  # 20 tokens/s: 50 ms apart; no stall across the reload

        events = [e["event"] for e in daemon.log_events()]
        assert "config_reloaded" in events
        assert "model_removed" in events
        assert "model_reconfigured" in events


def test_an_invalid_config_is_refused_and_the_old_one_keeps_serving(tmp_path: Path) -> None:
    with running_daemon(tmp_path, {"a": mock_model()}) as daemon:
        (tmp_path / "gpumux.json").write_text('{"models": {}, "bogus": 1}')
        daemon.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: any(e["event"] == "config_reload_failed" for e in daemon.log_events()),
            what="config_reload_failed",
        )
        assert post(daemon, "/v1/chat/completions", chat_body("a")).status == 200
        assert model_ids(daemon) == {"a"}
