"""What the daemon logs: JSON lines with request_id/model/switch_id, and never a secret.

Prompts, API keys, the admin token and S3 credentials pass through the daemon (requests,
headers, its environment); none of them may reach its log.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.support.admin import Admin
from tests.support.client import post
from tests.support.daemon import mock_model, running_daemon
from tests.support.ports import free_port

pytestmark = pytest.mark.integration


def test_no_prompt_key_token_or_s3_secret_in_the_log(tmp_path: Path) -> None:
    prompt = f"zebra-prompt-{uuid.uuid4().hex}"
    api_key = f"sk-{uuid.uuid4().hex}"
    admin_token = f"adm-{uuid.uuid4().hex}"
    s3_secret = f"s3-{uuid.uuid4().hex}"
    env = {
        "GPUMUX_T_KEYS": api_key,
        "GPUMUX_T_ADMIN": admin_token,
        "AWS_ACCESS_KEY_ID": "AKIATESTTESTTEST",
        "AWS_SECRET_ACCESS_KEY": s3_secret,
    }
    with running_daemon(
        tmp_path,
        {"a": mock_model(), "b": mock_model()},
        env=env,
        api_keys_env="GPUMUX_T_KEYS",
        admin_port=free_port(),
        admin_token_env="GPUMUX_T_ADMIN",
    ) as daemon:
        auth = {"Authorization": f"Bearer {api_key}"}
        messages = [{"role": "user", "content": prompt}]
        for model, stream in (("a", False), ("b", True), ("a", True)):
            body = json.dumps({"model": model, "messages": messages, "stream": stream}).encode()
            assert post(daemon, "/v1/chat/completions", body, headers=auth).status == 200
        # Failures too: a wrong key, a body that is not JSON, an unknown model.
        wrong = {"Authorization": f"Bearer {api_key}x"}
        assert post(daemon, "/v1/chat/completions", b"{}", headers=wrong).status == 401
        assert post(daemon, "/v1/completions", f"{{{prompt}".encode(), headers=auth).status == 400
        body = json.dumps({"model": "zz", "prompt": prompt}).encode()
        assert post(daemon, "/v1/completions", body, headers=auth).status == 404
        admin = Admin(daemon, admin_token)
        chat = {"model": "b", "messages": messages}
        code, _ = admin.post("/api/chat", chat, headers={"X-Gpumux-Api-Key": api_key})
        assert code == 200
        assert admin.post("/api/switch", {"model": "a"})[0] == 200
        assert admin.get("/api/status", token=admin_token + "x")[0] == 403
        log = daemon.log_text()

    for secret in (prompt, api_key, admin_token, s3_secret):
        assert secret not in log
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert len(events) > 20
    finished = [e for e in events if e["event"] == "request_finished"]
    assert finished
    assert all(e.get("request_id") and e.get("model") for e in finished)
    assert {e["model"] for e in finished} >= {"a", "b"}
    ops = [e for e in events if e["event"] in ("process_spawned", "process_exited")]
    assert any(e.get("switch_id") for e in ops), "operation lines carry their switch_id"
    outputs = [e for e in events if e["event"] == "backend_output"]
    assert outputs
    assert all(e.get("model") in ("a", "b") and e.get("pid") for e in outputs)
    assert all({"ts", "level", "event"} <= set(e) for e in events)
