"""`max_concurrency` through the real daemon: a second request waits for the first."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.admin import Admin
from tests.support.client import chat_body, post
from tests.support.daemon import mock_model, running_daemon
from tests.support.ports import free_port
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration


def test_a_request_beyond_the_cap_waits_in_the_queue_until_a_lease_is_released(
    tmp_path: Path,
) -> None:
    slow = ["--mock-tokens-per-sec", "10"]
    models = {"a": mock_model(extra_args=slow, max_concurrency=1)}
    with running_daemon(tmp_path, models, admin_port=free_port()) as daemon:
        admin = Admin(daemon)
        assert post(daemon, "/v1/chat/completions", chat_body("a", max_tokens=1)).status == 200
        done: dict[int, tuple[float, int]] = {}

        def send(n: int) -> None:
            status = post(daemon, "/v1/chat/completions", chat_body("a", max_tokens=8)).status
            done[n] = (time.monotonic(), status)

        first = threading.Thread(target=send, args=(1,))
        first.start()
        wait_until(lambda: admin.status()["models"]["a"]["inflight"] == 1, what="first in")
        second = threading.Thread(target=send, args=(2,))
        second.start()
        model: Any = wait_until(
            lambda: (m := admin.status()["models"]["a"])["queue_depth"] == 1 and m,
            what="second queued behind the cap",
        )
        assert model["inflight"] == 1
        assert model["max_concurrency"] == 1
        first.join(30)
        second.join(30)
        assert done[1][1] == done[2][1] == 200
        assert done[2][0] - done[1][0] > 0.5  # 8 tokens at 10/s, after the first ended
