"""Priorities through the real daemon: of two queues waiting for the GPU, the
higher-priority one is served first even though it arrived later."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.support.admin import Admin
from tests.support.client import chat_body, post
from tests.support.daemon import mock_model, running_daemon
from tests.support.ports import free_port
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration


@pytest.mark.timeout(90)
def test_the_higher_priority_queue_is_served_first(tmp_path: Path) -> None:
    models = {"a": mock_model(), "low": mock_model(), "high": mock_model(priority=5)}
    # min_active_secs holds `a` on the GPU while both queues form behind it.
    with running_daemon(
        tmp_path, models, admin_port=free_port(), policy={"min_active_secs": 3}
    ) as daemon:
        admin = Admin(daemon)
        assert admin.status()["models"]["high"]["priority"] == 5
        assert post(daemon, "/v1/chat/completions", chat_body("a")).status == 200
        served: dict[str, float] = {}

        def send(model: str) -> None:
            assert post(daemon, "/v1/chat/completions", chat_body(model)).status == 200
            served[model] = time.monotonic()

        low = threading.Thread(target=send, args=("low",))
        low.start()
        wait_until(lambda: admin.status()["models"]["low"]["queue_depth"] == 1, what="low queued")
        high = threading.Thread(target=send, args=("high",))
        high.start()
        low.join(60)
        high.join(60)
        assert served["high"] < served["low"]
