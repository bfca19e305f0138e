"""Eviction ahead of need through the real daemon: an idle model that is predicted to be
needed later than another leaves in the background, and the next switch pays only the
wake (mock backends on one fake GPU, two models that cannot share it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.daemon import chat, events, mock_model, running_daemon, wait_event
from tests.support.metrics import metric_value
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration

#: Generous: under a loaded CI machine the scheduler's recheck still comes within ms.
AHEAD_TIMEOUT_SECS = 60.0


def test_after_strict_alternation_the_idle_model_leaves_ahead_and_the_next_switch_only_wakes(
    tmp_path: Path,
) -> None:
    models = {"a": mock_model(), "b": mock_model()}
    with running_daemon(tmp_path, models, policy={"min_active_secs": 0}) as daemon:
        for _ in range(4):
            chat(daemon, "a")
            chat(daemon, "b")
        # a is due before b comes back, so b (idle, served last) leaves without a request.
        wait_event(daemon, "evict_ahead", model="b", timeout=AHEAD_TIMEOUT_SECS)
        wait_until(
            lambda: metric_value(daemon, "gpumux_model_state", model="b", state="sleeping") == 1,
            "b asleep after leaving ahead of need",
            timeout=AHEAD_TIMEOUT_SECS,
        )
        chat(daemon, "a")
        switch = events(daemon, "switch_finished", target="a")[-1]
        assert switch["outcome"] == "ok"
        assert switch["victims"] == ["b"]  # named, so the switch metric's `from` stays true
        assert "sleep" not in switch["phases"]  # b's eviction was off the request's path
        assert "wake" in switch["phases"]


def test_with_evict_ahead_off_the_idle_model_stays_until_a_request_needs_its_gpu(
    tmp_path: Path,
) -> None:
    models = {"a": mock_model(), "b": mock_model()}
    policy = {"min_active_secs": 0, "evict_ahead": False}
    with running_daemon(tmp_path, models, policy=policy) as daemon:
        for _ in range(4):
            chat(daemon, "a")
            chat(daemon, "b")
        assert events(daemon, "evict_ahead") == []
        assert metric_value(daemon, "gpumux_model_state", model="b", state="ready") == 1
        chat(daemon, "a")
        switch = events(daemon, "switch_finished", target="a")[-1]
        assert "sleep" in switch["phases"]
