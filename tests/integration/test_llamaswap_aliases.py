"""Aliases through the real daemon: served by their model, listed, unknown names 404, and
a SIGHUP that adds or removes an alias never restarts the model."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import openai
import pytest

from tests.support.admin import Admin
from tests.support.client import chat_body, get_json, post
from tests.support.daemon import mock_model, running_daemon
from tests.support.ports import free_port
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration


def test_an_alias_is_served_by_its_model_and_reload_changes_aliases_in_place(
    tmp_path: Path,
) -> None:
    models = {"small": mock_model(aliases=["gpt-4o-mini", "tiny"]), "other": mock_model()}
    with running_daemon(tmp_path, models, admin_port=free_port()) as daemon:
        with openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0) as sdk:
            reply = sdk.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=3
            )
        # The backend saw its own name: vLLM answers 404 to any other `model`.
        assert reply.model == "small"
        assert reply.choices[0].message.content

        listed = {m["id"]: m for m in get_json(daemon.url + "/v1/models")["data"]}
        assert set(listed) == {"small", "other", "gpt-4o-mini", "tiny"}
        assert listed["tiny"]["alias_of"] == "small"
        assert "alias_of" not in listed["small"]

        reply = post(daemon, "/v1/chat/completions", chat_body("gpt-5"))
        status, body = reply.status, reply.json()
        assert status == 404
        assert body["error"]["code"] == "model_not_found"

        admin = Admin(daemon)
        before = admin.status()["models"]
        assert before["small"]["aliases"] == ["gpt-4o-mini", "tiny"]

        config_path = tmp_path / "gpumux.json"
        config = json.loads(config_path.read_text())
        config["models"]["small"]["aliases"] = ["tiny"]
        config["models"]["other"]["aliases"] = ["gpt-4o-mini"]
        config_path.write_text(json.dumps(config))
        daemon.process.send_signal(signal.SIGHUP)

        wait_until(
            lambda: admin.status()["models"]["other"]["aliases"] == ["gpt-4o-mini"],
            what="aliases reloaded",
        )
        reply = post(daemon, "/v1/chat/completions", chat_body("gpt-4o-mini"))
        status, body = reply.status, reply.json()
        assert status == 200
        assert body["model"] == "other"
        assert post(daemon, "/v1/chat/completions", chat_body("tiny")).json()["model"] == "small"
        after = admin.status()["models"]
        assert after["small"]["pid"] == before["small"]["pid"]  # never restarted
        events = [e for e in daemon.log_events() if e["event"] == "config_reloaded"]
        assert events
        assert events[-1]["changed"] == []
        assert sorted(events[-1]["retuned"]) == ["other", "small"]
