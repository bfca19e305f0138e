"""The fast lane in the real daemon: a request it serves and the same request served by
aiohttp's server (a connection that began with a GET is aiohttp's) reach the backend alike
and come back alike, streamed or whole, in the request log too; a client that leaves a
fast-lane stream aborts the backend's request and frees its lease."""

from __future__ import annotations

import json
import re
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.admin import Admin
from tests.support.backend import backend_events
from tests.support.client import CHAT, RawReply, chat_body, exchange, raw_post
from tests.support.daemon import RunningDaemon, mock_model, running_daemon
from tests.support.echo_backend import ECHO_COMMAND
from tests.support.metrics import metric_value
from tests.support.ports import free_port
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration

TOKEN = "fast-lane-token"
#: Replies differ only in these: the mock's fresh completion ids and timestamps (and the
#: `Date` header, left out below).
_VARYING = [
    (re.compile(rb'"id": ?"[^"]*"'), b'"id": "-"'),
    (re.compile(rb'"created": ?\d+'), b'"created": 0'),
]


def same_parts(reply: RawReply) -> tuple[int, list[tuple[str, str]], bytes]:
    """The status, the headers in order but `Date`, and the body without chunk framing: how
    a stream's events fall into chunks depends on timing (the backend's writes, the reads),
    so the framing is not compared; its bytes are."""
    body = reply.body
    for pattern, replacement in _VARYING:
        body = pattern.sub(replacement, body)
    headers = [(k, v) for k, v in reply.headers if k.lower() != "date"]
    return reply.status, headers, body


def connection(daemon: RunningDaemon, *, aiohttp: bool) -> socket.socket:
    """A connection to the proxy port; one aiohttp's server reads, when asked."""
    sock = socket.create_connection(("127.0.0.1", daemon.config["port"]), timeout=30)
    if aiohttp:
        health = exchange(sock, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert health.status == 200
    return sock


def both_lanes(daemon: RunningDaemon, data: bytes) -> tuple[RawReply, RawReply]:
    """`data` sent on a fresh connection (the fast lane, once a lease stands ready) and on
    one aiohttp's server has, each twice in a row on its connection."""
    replies = []
    for aiohttp in (False, True):
        with connection(daemon, aiohttp=aiohttp) as sock:
            first, second = exchange(sock, data), exchange(sock, data)
            assert same_parts(first) == same_parts(second)
            replies.append(second)
    return replies[0], replies[1]


def ready(daemon: RunningDaemon, model: str) -> None:
    """The model serves, and its standing leases are stocked (the owner's next step)."""
    with connection(daemon, aiohttp=True) as sock:
        assert exchange(sock, raw_post(CHAT, chat_body(model))).status == 200
    time.sleep(0.2)


def requests_logged(daemon: RunningDaemon, model: str) -> list[dict[str, Any]]:
    code, body = Admin(daemon, TOKEN).get(f"/api/requests?limit=100&model={model}")
    assert code == 200, body
    logged: list[dict[str, Any]] = body["requests"]
    return logged


def test_both_lanes_forward_a_request_alike(tmp_path: Path) -> None:
    echo = mock_model(aliases=["echo-alias"])
    echo["extra_args"] = []
    with running_daemon(tmp_path, {"echo": echo}, vllm_command=list(ECHO_COMMAND)) as daemon:
        ready(daemon, "echo")
        body = json.dumps({"model": "echo-alias", "messages": [], "stream": False}).encode()
        sent = raw_post(CHAT, body, "X-Request-Id: same-id", "X-Custom: kept")
        fast, slow = both_lanes(daemon, sent)
        assert fast.status == 200
        # What the backend received (the echo mirrors it): the path, the headers and the
        # body (the alias rewritten to the model's name) are the same from both lanes.
        mirrored = json.loads(fast.body)
        assert ["X-Custom", "kept"] in mirrored["headers"]
        assert ["X-Request-ID", "same-id"] in mirrored["headers"]
        assert json.loads(slow.body) == mirrored
        assert same_parts(fast) == same_parts(slow)


def test_both_lanes_answer_alike(tmp_path: Path) -> None:
    with running_daemon(
        tmp_path,
        {"a": mock_model()},
        env={"GPUMUX_T_ADMIN": TOKEN},
        admin_port=free_port(),
        admin_token_env="GPUMUX_T_ADMIN",
    ) as daemon:
        ready(daemon, "a")
        for stream in (True, False):
            sent = raw_post(CHAT, chat_body("a", stream=stream, max_tokens=5), "X-Request-Id: s1")
            fast, slow = both_lanes(daemon, sent)
            assert fast.status == 200
            assert same_parts(fast) == same_parts(slow)
            if stream:
                assert fast.header("Transfer-Encoding") == "chunked"
                assert fast.body.endswith(b"data: [DONE]\n\n")
        # An error the backend sends is passed on alike (the mock refuses a bad max_tokens).
        sent = raw_post(CHAT, chat_body("a", max_tokens=-1), "X-Request-Id: e1")
        fast, slow = both_lanes(daemon, sent)
        assert fast.status == 400
        assert same_parts(fast) == same_parts(slow)
        # The request log saw each alike: for the stream and the whole reply, 2 lanes x 2
        # requests each; beside them the one `ready` sent, and the 4 refusals.
        logged = requests_logged(daemon, "a")
        keys = ("endpoint", "completion_tokens", "prompt_tokens", "client", "model", "alias")
        served = Counter(tuple(r[k] for k in keys) for r in logged if r["status"] == 200)
        assert sorted(served.values()) == [1, 4, 4]
        assert len([r for r in logged if r["status"] == 400]) == 4


def test_a_client_that_leaves_a_fast_lane_stream_aborts_the_backend(tmp_path: Path) -> None:
    slow = ["--mock-tokens-per-sec", "5"]
    with running_daemon(
        tmp_path,
        {"a": mock_model(extra_args=slow)},
        env={"GPUMUX_T_ADMIN": TOKEN},
        admin_port=free_port(),
        admin_token_env="GPUMUX_T_ADMIN",
    ) as daemon:
        ready(daemon, "a")
        sock = socket.create_connection(("127.0.0.1", daemon.config["port"]), timeout=15)
        body = chat_body("a", stream=True, max_tokens=50)
        sock.sendall(raw_post(CHAT, body, "X-Request-Id: leaver"))
        assert b"200" in sock.recv(4096)
        wait_until(
            lambda: metric_value(daemon, "gpumux_inflight_requests", model="a") == 1,
            what="in flight",
        )
        sock.close()
        wait_until(
            lambda: any(e["event"] == "client_abort" for e in backend_events(daemon, "a")),
            timeout=5,
            what="client_abort at the backend",
        )
        wait_until(
            lambda: metric_value(daemon, "gpumux_inflight_requests", model="a") == 0,
            what="lease released",
        )
        wait_until(
            lambda: requests_logged(daemon, "a")[0]["status"] == 499,
            what="the request logged as the client's leaving",
        )
