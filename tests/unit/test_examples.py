"""The shipped configs validate, say what they claim to, and the schema export is sound."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpumux.core.config import Config, json_schema
from gpumux.core.config_rules import ConfigProblems
from gpumux.daemon.config_file import load_config

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CONFIG_FILES = sorted([*ROOT.glob("*.json"), *(ROOT / "examples").glob("*.json")])
EXAMPLE = ROOT / "config.example.json"


def load(path: Path) -> tuple[Config, list[str]]:
    try:
        return load_config(path)
    except ConfigProblems as exc:
        pytest.fail(f"{path.relative_to(ROOT)} is invalid:\n" + "\n".join(exc.errors))


def test_the_shipped_configs_are_found() -> None:
    """The example and at least the three documented examples exist."""
    names = {p.relative_to(ROOT).as_posix() for p in CONFIG_FILES}
    assert {
        "config.example.json",
        "examples/h100-three-8b.json",
        "examples/two-gpu-tp2.json",
        "examples/consumer-16gb.json",
    } <= names


@pytest.mark.parametrize(
    "path", CONFIG_FILES, ids=[p.relative_to(ROOT).as_posix() for p in CONFIG_FILES]
)
def test_shipped_config_validates(path: Path) -> None:
    """Every JSON config in the repo root and examples/ has no errors (warnings are shown)."""
    _, warnings = load(path)
    for warning in warnings:
        print(f"{path.relative_to(ROOT)}: warning: {warning}")


def test_example_runs_on_mock_backends_and_a_fake_gpu() -> None:
    """config.example.json needs no GPU and no vLLM: mock-vllm on one fake 80 GiB GPU."""
    config, _ = load(EXAMPLE)
    assert config.vllm_argv == ["mock-vllm"]
    assert config.gpu.probe == "fake"
    assert config.gpu.fake_capacity_gib == [80]
    assert config.checkpoint is None
    assert (config.admin_port, config.metrics_port, config.port) == (3001, 9090, 3000)
    assert sorted(m.port for m in config.models.values()) == [8001, 8002, 8003]
    assert config.policy.policy_type == "time_slice"  # the default, as bench/policies.py found


def test_example_shows_three_eviction_strategies_and_sizes() -> None:
    """The example's models differ in eviction strategy and mock model size."""
    config, _ = load(EXAMPLE)
    strategies = {str(config.eviction_for(alias)) for alias in config.models}
    assert strategies == {"offload+keep_running", "discard+keep_running", "retain+stop"}
    sizes = {
        model.extra_args[model.extra_args.index("--mock-model-gib") + 1]
        for model in config.models.values()
    }
    assert len(sizes) == len(config.models)


def test_example_fits_two_awake_models_but_not_three() -> None:
    """Two awake reservations plus a sleeper's residual fit the fake GPU; three do not."""
    config, _ = load(EXAMPLE)
    capacity = config.gpu.fake_capacity_gib[0]
    residual = config.gpu.sleeping_residual_gib
    reservations = sorted(m.gpu_memory_utilization * capacity for m in config.models.values())
    assert reservations[-1] + reservations[-2] + residual <= capacity
    assert sum(reservations) > capacity


def test_real_examples_run_vllm() -> None:
    """The examples/ configs are for real vLLM on real GPUs."""
    for path in sorted((ROOT / "examples").glob("*.json")):
        config, _ = load(path)
        assert config.vllm_argv == ["vllm"], path.name
        assert config.gpu.probe in ("auto", "nvml"), path.name


def test_tp2_example_has_the_flags_suspend_needs() -> None:
    """The TP=2 example spans GPUs 0,1 with the NCCL-safety flags, so it validates silently."""
    config, warnings = load(ROOT / "examples" / "two-gpu-tp2.json")
    assert warnings == []
    tp_models = [m for m in config.models.values() if m.tensor_parallel_size == 2]
    assert len(tp_models) == 1
    assert tp_models[0].gpu_indices == (0, 1)
    assert any(m.tensor_parallel_size == 1 for m in config.models.values())


def test_schema_is_json_and_describes_models() -> None:
    """`gpumux schema` output (json_schema()) is JSON with `models` a required property."""
    schema = json.loads(json.dumps(json_schema()))
    assert schema["type"] == "object"
    assert "models" in schema["properties"]
    assert "models" in schema["required"]
    assert schema["additionalProperties"] is False
