"""Checkpoint-related configuration: every sensible eviction pair, the object store, pre-baking."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from gpumux.core.config import EvictionConfig, ProcessStrategy, WeightStrategy
from gpumux.core.config_rules import ConfigProblems, parse_config
from gpumux.core.eviction import evict_plan, wake_plan
from gpumux.daemon.prebake import check_request

pytestmark = pytest.mark.unit

PAIRS = list(itertools.product(WeightStrategy, ProcessStrategy))
NONSENSE = {(WeightStrategy.RETAIN, ProcessStrategy.KEEP_RUNNING)}


def config_with(eviction: dict[str, str] | None = None, **checkpoint: Any) -> dict[str, Any]:
    model: dict[str, Any] = {"model_path": "m", "port": 8001}
    if eviction:
        model["eviction"] = eviction
    return {"models": {"a": model}, "checkpoint": {"images_dir": "/tmp/i", **checkpoint}}


@pytest.mark.parametrize(("weights", "process"), PAIRS, ids=lambda v: str(v.value))
def test_every_sensible_pair_validates_and_has_plans(
    weights: WeightStrategy, process: ProcessStrategy
) -> None:
    raw = config_with({"weights": weights.value, "process": process.value})
    if (weights, process) in NONSENSE:
        with pytest.raises(ConfigProblems) as problems:
            parse_config(raw)
        assert "frees no GPU memory" in problems.value.errors[0]
        return
    config, _warnings = parse_config(raw)
    steps, resting = evict_plan(config.eviction_for("a"))
    assert steps or process is ProcessStrategy.KEEP_RUNNING
    assert wake_plan(weights, resting, warmup=False)


def test_object_store_endpoint_must_be_a_url() -> None:
    store = {"endpoint": "127.0.0.1:9000", "bucket": " "}
    with pytest.raises(ConfigProblems) as problems:
        parse_config(config_with(object_store=store))
    assert problems.value.errors == [
        "checkpoint.object_store.endpoint: must be an http:// or https:// URL",
        "checkpoint.object_store.bucket: must name a bucket",
    ]


def test_object_store_manifest_key_env_must_name_a_variable() -> None:
    store = {"endpoint": "http://127.0.0.1:9000", "bucket": "b", "manifest_key_env": " "}
    with pytest.raises(ConfigProblems) as problems:
        parse_config(config_with(object_store=store))
    assert problems.value.errors == [
        "checkpoint.object_store.manifest_key_env: must name an environment variable"
    ]


def test_object_store_bounds_have_defaults_and_limits() -> None:
    store = {"endpoint": "http://127.0.0.1:9000", "bucket": "b"}
    config, _ = parse_config(config_with(object_store=store))
    assert config.checkpoint is not None
    assert config.checkpoint.object_store is not None
    assert config.checkpoint.object_store.read_timeout_secs == 30
    with pytest.raises(ConfigProblems, match="multipart_chunk_mib"):
        parse_config(config_with(object_store={**store, "multipart_chunk_mib": 1}))


def test_prebake_request_defaults_to_discard_checkpoint() -> None:
    config, _ = parse_config(config_with())
    assert check_request(config, "a", None) == EvictionConfig.parse("discard+checkpoint")
    assert str(check_request(config, "a", "offload+checkpoint")) == "offload+checkpoint"


@pytest.mark.parametrize(
    ("model", "eviction", "message"),
    [
        ("zzz", None, "no such model"),
        ("a", "offload+keep_running", "needs process `checkpoint`"),
        ("a", "sideways", r"WEIGHTS\+PROCESS"),
    ],
)
def test_prebake_request_rejects_with_a_reason(
    model: str, eviction: str | None, message: str
) -> None:
    config, _ = parse_config(config_with())
    with pytest.raises(ValueError, match=message):
        check_request(config, model, eviction)


def test_prebake_needs_a_checkpoint_section() -> None:
    config, _ = parse_config({"models": {"a": {"model_path": "m", "port": 8001}}})
    with pytest.raises(ValueError, match="`checkpoint` section"):
        check_request(config, "a", None)
