"""The counting behind passive health (ecosystem §4 case 14): consecutive backend 5xx per
model's current process, reset by any answer below 500, off at threshold 0."""

from __future__ import annotations

import pytest

from gpumux.http.passive_health import BackendStreaks

pytestmark = pytest.mark.unit


def watched(threshold: int) -> tuple[BackendStreaks, list[tuple[str, int]]]:
    streaks = BackendStreaks(threshold)
    suspects: list[tuple[str, int]] = []
    streaks.watch(lambda model, pid: suspects.append((model, pid)))
    return streaks, suspects


def test_threshold_consecutive_5xx_make_a_suspect_and_further_ones_repeat_it() -> None:
    streaks, suspects = watched(3)
    for status in (500, 502):
        streaks.record("a", 7, status)
    assert suspects == []
    assert streaks.count("a", 7) == 2
    streaks.record("a", 7, 503)
    assert suspects == [("a", 7)]
    streaks.record("a", 7, 500)  # the watcher deduplicates; it is told again
    assert suspects == [("a", 7), ("a", 7)]
    assert streaks.count("a", 7) == 4


@pytest.mark.parametrize("status", [200, 201, 400, 404, 429, 499])
def test_any_answer_below_500_resets_the_streak(status: int) -> None:
    streaks, suspects = watched(2)
    for _ in range(5):
        streaks.record("a", 7, 500)
        streaks.record("a", 7, status)
    assert suspects == []
    assert streaks.count("a", 7) == 0


def test_threshold_zero_disables_counting() -> None:
    streaks, suspects = watched(0)
    for _ in range(100):
        streaks.record("a", 7, 500)
    assert suspects == []
    assert streaks.count("a", 7) == 0


def test_streaks_are_per_model_and_per_process() -> None:
    streaks, suspects = watched(2)
    streaks.record("a", 7, 500)
    streaks.record("b", 8, 500)
    streaks.record("a", 9, 500)  # a's new process starts clean
    assert suspects == []
    assert (streaks.count("a", 7), streaks.count("a", 9), streaks.count("b", 8)) == (0, 1, 1)
    streaks.record("a", 9, 500)
    streaks.record("b", 8, 500)
    assert suspects == [("a", 9), ("b", 8)]


def test_unknown_process_is_not_counted() -> None:
    streaks, suspects = watched(1)
    streaks.record("a", None, 500)
    assert suspects == []


def test_reset_forgets_only_the_named_process() -> None:
    streaks, _ = watched(5)
    streaks.record("a", 7, 500)
    streaks.reset("a", 6)  # a stale verdict about an older process
    assert streaks.count("a", 7) == 1
    streaks.reset("a", 7)
    assert streaks.count("a", 7) == 0


def test_without_a_watcher_counting_still_works() -> None:
    streaks = BackendStreaks(1)
    streaks.record("a", 7, 500)
    assert streaks.count("a", 7) == 1
