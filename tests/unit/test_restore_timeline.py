"""The restore timeline: phases in order, accumulated, and its log fields."""

from __future__ import annotations

import time

import pytest

from gpumux.checkpoint.timeline import RestoreTimeline

pytestmark = pytest.mark.unit


def test_phases_are_recorded_in_order_and_sum_to_the_total() -> None:
    timeline = RestoreTimeline()
    time.sleep(0.01)
    timeline.mark("image_checks")
    timeline.mark("criu")
    timeline.count("health_probes")
    timeline.count("health_probes")
    fields = timeline.fields()
    assert list(fields["phases"]) == ["image_checks", "criu"]  # type: ignore[call-overload]
    assert timeline.phases["image_checks"] >= 0.01
    assert fields["counts"] == {"health_probes": 2}
    assert timeline.total == pytest.approx(sum(timeline.phases.values()))
    assert abs(float(fields["started_at"]) - time.time()) < 60  # type: ignore[arg-type]


def test_a_phase_marked_twice_accumulates_and_skip_drops_time() -> None:
    timeline = RestoreTimeline()
    timeline.mark("health")
    first = timeline.phases["health"]
    time.sleep(0.02)
    timeline.skip()
    timeline.mark("health")
    assert timeline.phases["health"] - first < 0.02
