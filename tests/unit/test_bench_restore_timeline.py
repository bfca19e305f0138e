"""bench/restore_timeline.py: gpumux's restore phases lined up with the client's clock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bench import restore_timeline as rt

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

EVENT = {"started_at": 100.010, "phases": {"image_checks": 0.002, "criu": 0.5, "health": 0.008}}


def test_a_sample_covers_send_to_first_token_without_gaps() -> None:
    one = rt.sample(100.0, 0.6, EVENT)
    assert list(one) == [rt.BEFORE, "image_checks", "criu", "health", rt.AFTER]
    assert one[rt.BEFORE] == pytest.approx(0.010)
    assert one[rt.AFTER] == pytest.approx(0.6 - 0.010 - 0.510)
    assert sum(one.values()) == pytest.approx(0.6)


def test_the_switch_event_splits_the_time_after_health() -> None:
    one = rt.sample(100.0, 0.6, EVENT, ready_at=100.530)
    assert one[rt.HANDOFF] == pytest.approx(0.010)
    assert one[rt.FIRST] == pytest.approx(0.070)
    assert rt.AFTER not in one
    # A clock that does not line up (an event outside the window) is not used.
    assert rt.AFTER in rt.sample(100.0, 0.6, EVENT, ready_at=99.0)


def test_logged_at_reads_the_iso_timestamp() -> None:
    assert rt.logged_at({"ts": "1970-01-01T00:01:40.500000Z"}) == pytest.approx(100.5)
    assert rt.logged_at({}) is None
    assert rt.logged_at({"ts": "yesterday"}) is None


def test_the_table_has_a_row_per_phase_and_the_total() -> None:
    table = rt.table([rt.sample(100.0, 0.6, EVENT), rt.sample(100.0, 0.7, EVENT)])
    assert "| criu | 500.0 |" in table
    assert "**send → first token** | 650.0" in table


def test_every_phase_gpumux_marks_is_explained() -> None:
    """The table's `what` column covers each `timeline.mark("...")` in the sources, and
    names no phase that gpumux no longer records."""
    marked: set[str] = set()
    for path in (ROOT / "src" / "gpumux").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "mark"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                marked.add(node.args[0].value)
    assert "criu" in marked
    bench_own = {rt.BEFORE, rt.AFTER, rt.HANDOFF, rt.FIRST}
    assert marked == set(rt.PHASES) - bench_own
