"""`scripts/gpu-check` without a GPU: sizing, the config it feeds gpumux, timing attribution,
wheel selection, verdicts and the report. (`--fake-gpu` runs the whole check on a CPU.)"""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any

import pytest

from gpumux.core.config_rules import parse_config
from tests.support.gpu_check import prereqs, report, timings, verdicts
from tests.support.gpu_check.plan import CRIU, GIB, STRATEGIES, Plan, sizing_problem

pytestmark = pytest.mark.unit

CARD = 140 * GIB


def make_plan(tmp_path: Path, *, fake: bool = False, criu: str | None = None) -> Plan:
    strategies = (*STRATEGIES, CRIU) if criu else STRATEGIES
    return Plan(tmp_path, strategies, 0.26, 4.0, CARD, fake, "cuda-checkpoint", criu)


def test_three_fit_and_four_do_not() -> None:
    assert sizing_problem(0.26, 4, 1 / 140) is None
    assert sizing_problem(0.26, 5, 1 / 140) is None
    assert "four awake" in (sizing_problem(0.2, 4, 1 / 140) or "")
    assert "three awake" in (sizing_problem(0.34, 4, 1 / 140) or "")


@pytest.mark.parametrize(("fake", "criu"), [(False, None), (True, None), (False, "/bin/criu")])
def test_the_generated_config_is_valid_gpumux_config(
    tmp_path: Path, fake: bool, criu: str | None
) -> None:
    config, _warnings = parse_config(make_plan(tmp_path, fake=fake, criu=criu).config())
    assert config.gpu.probe == ("fake" if fake else "nvml")
    evictions = {alias: str(config.eviction_for(alias)) for alias in config.models}
    assert evictions["m-offload"] == "offload+keep_running"
    assert evictions["m-cuda-suspend"] == "retain+cuda_suspend"
    assert ("m-criu" in evictions) is bool(criu)
    for model in config.models.values():
        assert model.gpu_memory_utilization == 0.26
        assert ("torch" in model.extra_args) is not fake
    assert config.checkpoint is not None
    assert config.checkpoint.cuda_checkpoint_api == ("cli" if fake else "driver")


def switch(target: str, victims: list[str], phases: dict[str, float], outcome: str = "ok") -> Any:
    return {"event": "switch_finished", "target": target, "victims": victims,
            "phases": phases, "outcome": outcome}  # fmt: skip


def test_phases_are_attributed_to_the_victim_and_the_target(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    events = [
        switch("m-offload", [], {"start": 9.0}),
        switch("m-stop", ["m-offload"], {"sleep": 2.0, "start": 8.0}),
        switch("m-offload", ["m-stop"], {"stop": 1.0, "wake": 0.5}),
        switch("m-discard", ["m-cuda-suspend"], {"suspend": 20.0, "wake": 0.2, "reload": 1.0}),
        {"event": "host_memory_downgrade", "model": "m-offload", "instead": "discard+stop"},
    ]
    got = timings.per_strategy(plan, events, {"m-cuda-suspend": 40 * GIB})
    assert got["m-offload"].first_start_secs == [9.0]
    assert got["m-offload"].evict_secs == [2.0]
    assert got["m-offload"].wake_secs == [0.5]
    assert got["m-stop"].first_start_secs == [8.0]  # its first start, not a wake
    assert got["m-stop"].evict_secs == [1.0]
    assert got["m-cuda-suspend"].evict_secs == [20.0]
    assert got["m-cuda-suspend"].evict_bytes == 40 * GIB
    assert got["m-discard"].first_start_secs == []  # a first start is a "start" phase
    assert got["m-offload"].not_ok == ["host budget: evicted as discard+stop"]


def test_the_newest_compatible_wheel_is_chosen(tmp_path: Path) -> None:
    here = f"cp3{sys.version_info.minor}"
    for name in (
        "pkg-1.0-py3-none-any.whl", "pkg-1.2-py3-none-any.whl",
        f"native-2.0-{here}-{here}-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "native-3.0-cp27-cp27m-win32.whl", "abi-1.0-cp36-abi3-manylinux2014_x86_64.whl",
    ):  # fmt: skip
        (tmp_path / name).write_bytes(b"")
    found = prereqs.wheels_in(tmp_path)
    assert found["pkg"].version == "1.2"
    if platform.machine() == "x86_64":
        assert found["native"].version == "2.0"
        assert "abi" in found


def test_lacking_names_missing_and_old_distributions() -> None:
    got = prereqs.lacking({"pytest": "1", "no-such-dist-xyz": "1", "pydantic": "999"})
    assert got["no-such-dist-xyz"] == "missing"
    assert got["pydantic"].endswith("< 999")
    assert "pytest" not in got


def test_not_run_rows_do_not_fail_the_verdict() -> None:
    rows = [verdicts.row("a", True, ""), verdicts.row("cli", None, "no binary")]
    assert verdicts.verdict(rows)
    assert not verdicts.verdict([*rows, verdicts.row("b", False, "")])


def test_the_report_renders_partial_and_full_results(tmp_path: Path) -> None:
    assert "gpu-check: not run" in report.markdown({})
    times = timings.StrategyTimes(STRATEGIES[0], 4 * GIB, 4 * GIB, [1.0, 0.1], [0.1, 0.1])
    results = {
        "ok": True,
        "checks": [verdicts.row("nothing left behind", True, "none")],
        "strategies": {"m-offload": times.as_dict()},
        "checksums": {"m-offload": ["ab", "ab"]},
        "reference": {"bytes": 4 * GIB, **{f"{k}_secs": 0.1 for k in report.REFERENCE_KEYS},
                      **{f"{k}_bytes_per_s": 4e10 for k in report.REFERENCE_KEYS}},
        "gpu_tests": [{"mode": "cli", "status": "not run", "reason": "no binary", "cases": []}],
    }  # fmt: skip
    text = report.markdown(results)
    assert "| m-offload | offload+keep_running | 1.00, 0.10 | 4.3, 42.9 |" in text
    assert "1 distinct of 2" in text
    report.write(tmp_path, results)
    assert (tmp_path / "gpu-check.json").exists()
