"""Secrets stay with gpumux: never in a backend's environment, request headers or the log.

gpumux runs with an S3 key pair, API keys and an admin token in its environment. A live
backend's `/proc/<pid>/environ` (the API server and its engine core) must hold none of
them, and none of their variable names; the API key a client presents is not forwarded
to the backend either. The log-side check for requests is in
tests/integration/test_log_hygiene.py; here the daemon's own start-up and backend
output are checked with the secrets set as environment variables.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.support.backend import backend_state
from tests.support.client import CHAT, chat_body, post
from tests.support.daemon import mock_model, running_daemon
from tests.support.echo_backend import ECHO_COMMAND
from tests.support.ports import free_port

pytestmark = pytest.mark.integration


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def oom_score_adj(pid: int) -> int:
    return int(Path(f"/proc/{pid}/oom_score_adj").read_text())


def test_backend_processes_never_see_gpumux_secrets(tmp_path: Path) -> None:
    """AWS keys, API keys (even under a `VLLM_` name, which the allow-list would pass),
    the admin token and token-looking variables never reach a backend process."""
    secrets = {
        "AWS_ACCESS_KEY_ID": f"AKIA{uuid.uuid4().hex[:16].upper()}",
        "AWS_SECRET_ACCESS_KEY": f"aws-secret-{uuid.uuid4().hex}",
        "AWS_SESSION_TOKEN": f"aws-session-{uuid.uuid4().hex}",
        "VLLM_API_KEY": f"sk-{uuid.uuid4().hex}",
        "GPUMUX_SEC_ADMIN": f"adm-{uuid.uuid4().hex}",
        "HF_TOKEN": f"hf_{uuid.uuid4().hex}",
        "MY_SERVICE_PASSWORD": f"pw-{uuid.uuid4().hex}",
    }
    with running_daemon(
        tmp_path,
        {"a": mock_model(extra_args=["--tensor-parallel-size", "2"], gpus=[0, 1])},
        env=secrets,
        api_keys_env="VLLM_API_KEY",
        admin_port=free_port(),
        admin_token_env="GPUMUX_SEC_ADMIN",
        gpu={"probe": "fake", "fake_capacity_gib": [80, 80], "sleeping_residual_gib": 0.5},
    ) as daemon:
        auth = {"Authorization": f"Bearer {secrets['VLLM_API_KEY']}"}
        assert post(daemon, CHAT, chat_body(), headers=auth).status == 200
        state = backend_state(daemon, "a")
        pids = [state["pid"], *state["worker_pids"]]
        assert len(pids) == 3  # the API server and two TP workers
        for pid in pids:
            env = environ(pid)
            leaked = [name for name in env if name in secrets or name.startswith("AWS_")]
            assert not leaked, (pid, leaked)
            blob = "\0".join(f"{k}={v}" for k, v in env.items())
            for name, value in secrets.items():
                assert value not in blob, (pid, name)
            assert env["VLLM_SERVER_DEV_MODE"] == "1"
            assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
            # Under memory pressure the kernel kills a model before the supervisor.
            assert oom_score_adj(pid) > oom_score_adj(daemon.process.pid)
        log = daemon.log_text() + "".join(
            p.read_text(errors="replace") for p in (tmp_path / "state" / "logs").glob("*.log")
        )
    for name, value in secrets.items():
        assert value not in log, name


def test_client_api_key_is_not_forwarded_to_the_backend(tmp_path: Path) -> None:
    """The Bearer key authenticates the client to gpumux; the backend never receives it."""
    key = f"sk-{uuid.uuid4().hex}"
    model = mock_model()
    model["extra_args"] = []
    with running_daemon(
        tmp_path,
        {"e": model},
        env={"GPUMUX_SEC_KEYS": key},
        api_keys_env="GPUMUX_SEC_KEYS",
        vllm_command=list(ECHO_COMMAND),
    ) as daemon:
        reply = post(daemon, CHAT, chat_body("e"), headers={"Authorization": f"Bearer {key}"})
        assert reply.status == 200, reply.body
        mirror = reply.json()
        assert not [k for k, _ in mirror["headers"] if k.lower() == "authorization"]
        assert key not in json.dumps(mirror)


#: (client's X-Request-Id, whether gpumux may take it as is)
REQUEST_IDS = [
    ("req-ok_1.2", True),
    ("x" * 128, True),
    ("x" * 129, False),
    ('"},{"injected": true', False),
    ("../../etc/passwd", False),
    ("id with spaces", False),
    ("\u00fcn\u00efcode", False),
]


def test_client_request_ids_are_echoed_only_when_they_are_safe_tokens(tmp_path: Path) -> None:
    """`X-Request-Id` is logged, echoed and forwarded: only ≤ 128 chars of
    `[A-Za-z0-9._-]` are taken from a client; anything else is replaced by a fresh id."""
    with running_daemon(tmp_path, {"a": mock_model()}) as daemon:
        for given, echoed in REQUEST_IDS:
            reply = post(daemon, CHAT, chat_body("nope"), headers={"X-Request-Id": given})
            assert reply.status == 404
            got = reply.headers["x-request-id"]
            if echoed:
                assert got == given
            else:
                assert got != given, given
                assert len(got) <= 128
                assert got.replace("-", "").isalnum()
        logged = {str(e.get("request_id")) for e in daemon.log_events()}
        assert not [g for g, ok in REQUEST_IDS if not ok and g in logged]
