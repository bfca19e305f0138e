"""`gpumux simulate`: the command's output contract, determinism, traces, and the model.

Runs the command in-process through its own argparse wiring (the lead's `cli` calls the
same `add_arguments` / `run`), on short simulated durations so the suite stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from gpumux.core.config import Config, EvictionConfig
from gpumux.core.eviction import evict_plan, wake_plan
from gpumux.core.states import ModelState
from gpumux.scheduler.messages import Operation, OpKind
from gpumux.simulate import command, scenario
from gpumux.simulate.backend import MODEL_TPS, SEQ_TPS, Backend
from gpumux.simulate.report import FIELDS, percentile, union_secs
from gpumux.simulate.switch_model import SwitchModel
from gpumux.simulate.workloads import WORKLOADS, generate

pytestmark = pytest.mark.unit


def write_config(tmp_path: Path, models: int = 2, policy: str = "time_slice") -> Path:
    raw: dict[str, Any] = {
        "models": {
            f"m{i}": {
                "model_path": f"test/m{i}",
                "port": 8100 + i,
                "extra_args": ["--gpu-memory-utilization", "0.9"],
            }
            for i in range(models)
        },
        "gpu": {"probe": "fake", "fake_capacity_gib": [80]},
        "policy": {"policy_type": policy},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    return path


def simulate(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="gpumux simulate")
    command.add_arguments(parser)
    code = command.run(parser.parse_args(list(argv)))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_has_exactly_the_contract_fields_per_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    code, out, _ = simulate(
        capsys, str(config), "--workload", "balanced", "--duration", "300",
        "--policy", "fifo", "--policy", "cost_aware", "--policy", "time_slice", "--json",
    )  # fmt: skip
    assert code == 0
    results = json.loads(out)
    assert list(results) == ["fifo", "cost_aware", "time_slice"]
    for summary in results.values():
        assert set(summary) == set(FIELDS)
        assert isinstance(summary["switches"], int)
        assert isinstance(summary["completed"], int)
        assert isinstance(summary["over_bound"], int)
        assert 0 <= summary["busy_fraction"] <= 1
        assert summary["p50_wait"] <= summary["p99_wait"] <= summary["max_wait"]
        assert summary["completed"] > 0


def test_default_policy_is_the_configs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, policy="cost_aware")
    code, out, _ = simulate(
        capsys, str(config), "--workload", "dominant", "--duration", "120", "--json"
    )
    assert code == 0
    assert list(json.loads(out)) == ["cost_aware"]


def test_same_seed_same_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(write_config(tmp_path))
    runs = [
        simulate(
            capsys, config, "--workload", "bursty", "--duration", "600", "--seed", seed, "--json"
        )[1]
        for seed in ("7", "7", "8")
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_markdown_table_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    code, out, _ = simulate(capsys, str(config), "--workload", "interleave", "--duration", "60")
    assert code == 0
    assert "| policy | mean wait | p50 | p99 | max |" in out
    assert "| time_slice |" in out


def test_trace_is_replayed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    rows = [
        {"t": 0.0, "model": "m0", "prompt_tokens": 100, "output_tokens": 50},
        {"t": 1.0, "model": "m1", "prompt_tokens": 100, "output_tokens": 50},
        {"t": 1.5, "model": "m0", "prompt_tokens": 10, "output_tokens": 5},
    ]
    trace = tmp_path / "trace.jsonl"
    trace.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    code, out, _ = simulate(
        capsys,
        str(config),
        "--trace",
        str(trace),
        "--policy",
        "fifo",
        "--switch-cost",
        "4",
        "--json",
    )
    assert code == 0
    fifo = json.loads(out)["fifo"]
    assert fifo["completed"] == 3
    assert fifo["switches"] >= 2  # m0 wakes, then m1 (m0 again after)
    assert fifo["max_wait"] >= 4  # m1 waited at least for one switch


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"t": 0, "model": "nope", "prompt_tokens": 1, "output_tokens": 1}', "not in the config"),
        ('{"t": 0, "model": "m0"}', "not a trace line"),
        ("not json", "not a trace line"),
        ('{"t": -1, "model": "m0", "prompt_tokens": 1, "output_tokens": 1}', "non-negative"),
    ],
)
def test_bad_trace_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, message: str
) -> None:
    config = write_config(tmp_path)
    trace = tmp_path / "trace.jsonl"
    trace.write_text(line + "\n")
    code, out, err = simulate(capsys, str(config), "--trace", str(trace))
    assert code == 2
    assert message in err
    assert out == ""


def test_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"models": {}}')
    code, _, err = simulate(capsys, str(path), "--workload", "balanced")
    assert code == 2
    assert "error:" in err


def test_workload_and_trace_are_exclusive_and_one_is_required(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    config = str(write_config(tmp_path))
    with pytest.raises(SystemExit):
        parser.parse_args([config])
    with pytest.raises(SystemExit):
        parser.parse_args([config, "--workload", "balanced", "--trace", "t.jsonl"])
    with pytest.raises(SystemExit):
        parser.parse_args([config, "--workload", "balanced", "--switch-cost", "-1"])


def test_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    png = tmp_path / "out" / "waits.png"
    code, _, _ = simulate(
        capsys, str(config), "--workload", "surge", "--duration", "120",
        "--policy", "fifo", "--policy", "time_slice", "--plot", str(png),
    )  # fmt: skip
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_many_models_builds_eight_models_on_two_gpus(tmp_path: Path) -> None:
    config = Config.model_validate(json.loads(write_config(tmp_path).read_text()))
    many = scenario.many_models(config)
    assert len(many.models) == 8
    assert many.gpu.fake_capacity_gib == [80, 80]
    assert sorted(m.gpu_indices for m in many.models.values()) == [(0,)] * 4 + [(1,)] * 4
    assert many.policy == config.policy
    assert scenario.many_models(many) is many  # eight already: used as it is


def test_every_workload_is_seeded_and_sorted() -> None:
    for name in WORKLOADS:
        arrivals = generate(name, ["a", "b"], 600, seed=3)
        assert arrivals == generate(name, ["a", "b"], 600, seed=3), name
        assert arrivals, name
        assert [a.t for a in arrivals] == sorted(a.t for a in arrivals)
        assert all(0 <= a.t < 600 and a.model in ("a", "b") for a in arrivals)


def test_switch_cost_override_makes_evict_plus_wake_exactly_that() -> None:
    model = SwitchModel(12.0)
    for spec in ("offload+keep_running", "discard+keep_running", "discard+checkpoint"):
        eviction = EvictionConfig.parse(spec)
        steps, resting = evict_plan(eviction)
        evict = Operation(1, "m", OpKind.EVICT, steps, eviction)
        wake = Operation(
            2, "m", OpKind.WAKE, wake_plan(eviction.weights, resting, warmup=False), eviction
        )
        assert model.duration(evict) + model.duration(wake) == pytest.approx(12.0)


def test_a_cold_start_costs_more_than_a_wake_by_default() -> None:
    eviction = EvictionConfig.parse("offload+keep_running")
    cold = wake_plan(eviction.weights, ModelState.STOPPED, warmup=False)
    warm = wake_plan(eviction.weights, ModelState.SLEEPING, warmup=False)
    model = SwitchModel()
    assert model.duration(Operation(1, "m", OpKind.WAKE, cold, eviction)) > model.duration(
        Operation(2, "m", OpKind.WAKE, warm, eviction)
    )


def test_backend_batches_within_per_sequence_and_per_model_speed() -> None:
    backend = Backend(max_num_seqs=2)
    backend.add(1, 100.0, now=0)
    assert backend.next_done_at() == pytest.approx(100 / SEQ_TPS)  # alone: latency-bound
    backend.add(2, 100.0, now=0)
    backend.add(3, 100.0, now=0)  # beyond max_num_seqs: waits inside the backend
    assert len(backend.running) == 2
    assert len(backend.waiting) == 1
    done_at = backend.next_done_at()
    assert done_at is not None
    assert sorted(backend.finish_due(done_at)) == [1, 2]
    assert list(backend.running) == [3]
    many = Backend(max_num_seqs=256)
    for ticket in range(100):
        many.add(ticket, 100.0, now=0)
    assert many.rate() == pytest.approx(MODEL_TPS / 100)  # throughput-bound when full


def test_report_arithmetic() -> None:
    assert percentile([], 0.99) == 0
    assert percentile([1, 2, 3, 4], 0.5) == 2
    assert percentile(list(range(1, 101)), 0.99) == 99
    assert union_secs([(0, 2), (1, 3), (5, 6)]) == 4
