"""Learned switch costs survive a restart; a damaged file never stops the daemon."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpumux.daemon.costs_store import FILE_NAME, costs_path, load_costs, save_costs
from gpumux.policy.costs import PRIOR_SECS, SwitchCosts

pytestmark = pytest.mark.unit


def learned() -> SwitchCosts:
    costs = SwitchCosts()
    costs.observe_op("llama", "evict", "offload+keep_running", 3.0)
    costs.observe_op("llama", "wake", "offload+keep_running", 1.5)
    costs.observe_op("llama", "wake", "offload+keep_running", 2.5)
    costs.observe_switch("qwen", "llama", "offload+keep_running", 4.2)
    return costs


def test_round_trip(tmp_path: Path) -> None:
    costs = learned()
    save_costs(tmp_path, costs)
    loaded, warning = load_costs(tmp_path)
    assert warning is None
    assert loaded.to_dict() == costs.to_dict()
    assert loaded.op_cost("llama", "wake", "offload+keep_running") == pytest.approx(1.8)


def test_missing_file_starts_fresh_without_a_warning(tmp_path: Path) -> None:
    costs, warning = load_costs(tmp_path)
    assert warning is None
    assert costs.to_dict() == SwitchCosts().to_dict()
    assert costs.op_cost("x", "cold_start", "any") == PRIOR_SECS["cold_start"]


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[1, 2, 3]",
        b'{"version": 99, "ops": {}}',
        b'{"version": 1, "ops": {"a|wake|s": NaN}}',
        b"\xff\xfe binary",
        b"",
    ],
)
def test_corrupt_file_starts_fresh_with_a_warning(tmp_path: Path, content: bytes) -> None:
    costs_path(tmp_path).write_bytes(content)
    costs, warning = load_costs(tmp_path)
    assert costs.to_dict() == SwitchCosts().to_dict()
    assert warning is not None
    assert FILE_NAME in warning
    assert "start fresh" in warning


def test_nonsense_values_are_dropped_not_fatal(tmp_path: Path) -> None:
    payload = {"version": 1, "ops": {"a|wake|s": -1, "b|wake|s": "x", "c|wake|s": 2}, "samples": 3}
    costs_path(tmp_path).write_text(json.dumps(payload))
    costs, warning = load_costs(tmp_path)
    assert warning is None
    assert costs.ops == {"c|wake|s": 2.0}
    assert costs.samples == {}


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    save_costs(tmp_path, SwitchCosts())
    save_costs(tmp_path, learned())
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE_NAME]
    assert json.loads(costs_path(tmp_path).read_text())["version"] == 1


def test_failed_save_raises_and_cleans_up_its_temp_file(tmp_path: Path) -> None:
    """The rename is the commit point; if it fails, nothing half-written is left behind."""
    blocker = costs_path(tmp_path)
    blocker.mkdir()  # a directory where the file should go: the rename must fail
    (blocker / "keep").write_text("x")
    with pytest.raises(IsADirectoryError):
        save_costs(tmp_path, learned())
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE_NAME]
    assert (blocker / "keep").read_text() == "x"
