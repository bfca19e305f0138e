"""`gpumux simulate --cost-profile` (and, below, `--bound`) through the real command line.

Runs `gpumux.cli.main.main` in-process (the same parser the console script builds), on
short simulated runs of `config.example.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpumux.cli.main import main
from gpumux.simulate.cost_profile import H200_VM, profile_json

pytestmark = pytest.mark.unit
EXAMPLE = str(Path(__file__).resolve().parents[2] / "config.example.json")
SHORT = ["--workload", "interleave", "--duration", "300", "--policy", "fifo"]


def simulate(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["simulate", EXAMPLE, *SHORT, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_builtin_profile_changes_the_costs_and_keeps_the_json_contract(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, default, _ = simulate(capsys, "--json")
    assert code == 0
    code, profiled, _ = simulate(capsys, "--json", "--cost-profile", "h200-vm")
    assert code == 0
    assert json.loads(profiled)["fifo"].keys() == json.loads(default)["fifo"].keys()
    assert json.loads(profiled) != json.loads(default)


def test_a_profile_file_gives_the_same_numbers_as_the_builtin_it_copies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "h200.json"
    path.write_text(profile_json(H200_VM))
    _, builtin, _ = simulate(capsys, "--json", "--cost-profile", "h200-vm")
    code, from_file, _ = simulate(capsys, "--json", "--cost-profile", str(path))
    assert code == 0
    assert json.loads(from_file) == json.loads(builtin)


def test_a_bad_profile_exits_2_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"pin_gbps": -1}))
    code, out, err = simulate(capsys, "--cost-profile", str(path))
    assert (code, out) == (2, "")
    assert "bad.json" in err
    assert "pin_gbps" in err


def test_switch_cost_and_a_profile_are_one_or_the_other(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        simulate(capsys, "--switch-cost", "5", "--cost-profile", "h200-vm")
    assert exit_.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_bound_adds_a_bound_beside_the_policies_that_none_beats(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = simulate(capsys, "--json", "--bound", "--policy", "cost_aware")
    assert code == 0
    results = json.loads(out)
    assert set(results) == {"fifo", "cost_aware", "bound"}
    bound = results["bound"]
    assert set(bound) == {"p99_wait", "busy_fraction", "method", "requests"}
    assert bound["method"] in ("exact", "windows")
    assert bound["requests"] == results["fifo"]["completed"]
    for policy in ("fifo", "cost_aware"):
        assert results[policy]["p99_wait"] >= bound["p99_wait"]
        assert results[policy]["busy_fraction"] <= bound["busy_fraction"]


def test_bound_in_the_table_output_is_one_line_under_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = simulate(capsys, "--bound", "--cost-profile", "h200-vm")
    assert code == 0
    assert out.splitlines()[-1].startswith("bound (")
    assert "no policy's p99 wait is below" in out


def test_without_bound_the_json_has_only_the_policies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out, _ = simulate(capsys, "--json")
    assert set(json.loads(out)) == {"fifo"}
