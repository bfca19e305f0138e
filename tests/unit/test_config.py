"""Config contract (design §1): every validation rule, the derived values, and the loader."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from gpumux.core.config import (
    DEFAULT_EVICTION,
    EvictionConfig,
    ModelConfig,
    ProcessStrategy,
    WeightStrategy,
)
from gpumux.core.config_rules import ConfigProblems, parse_config
from gpumux.daemon.config_file import load_config

pytestmark = pytest.mark.unit


def base() -> dict[str, Any]:
    """A minimal valid config: two models, defaults everywhere else."""
    return {
        "models": {
            "alpha": {"model_path": "org/alpha", "port": 8001},
            "beta": {"model_path": "org/beta", "port": 8002},
        }
    }


def with_(overrides: dict[str, Any], **models: dict[str, Any]) -> dict[str, Any]:
    """`base()` with top-level keys replaced and model fields merged in."""
    raw = base()
    raw.update(copy.deepcopy(overrides))
    for alias, fields in models.items():
        raw["models"].setdefault(alias, {}).update(fields)
    return raw


def errors_of(raw: object) -> list[str]:
    with pytest.raises(ConfigProblems) as info:
        parse_config(raw)
    return info.value.errors


def warnings_of(raw: object) -> list[str]:
    _, warnings = parse_config(raw)
    return warnings


def model(*extra_args: str, **fields: Any) -> ModelConfig:
    return ModelConfig(model_path="m", port=8001, extra_args=list(extra_args), **fields)


CUDA_SUSPEND = {"weights": "retain", "process": "cuda_suspend"}
CRIU = {"weights": "discard", "process": "checkpoint"}


def test_minimal_config_is_valid_with_documented_defaults() -> None:
    """A config with only models validates, warns about nothing, and takes §1's defaults."""
    config, warnings = parse_config(base())
    assert warnings == []
    assert (config.port, config.host, config.metrics_port) == (3000, "0.0.0.0", 9090)
    assert (config.admin_port, config.admin_host) == (None, "127.0.0.1")
    assert config.vllm_argv == ["vllm"]
    assert config.checkpoint is None
    assert config.warmup is False
    assert config.policy.policy_type == "time_slice"  # the best in bench/policies.py
    assert config.policy.eviction == DEFAULT_EVICTION
    alpha = config.models["alpha"]
    assert (alpha.enable_sleep_mode, alpha.startup_timeout_secs, alpha.max_queue) == (
        True,
        600,
        256,
    )


# --- unknown keys, at every level ------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (with_({"bogus": 1}), "bogus"),
        (with_({}, alpha={"bogus": 1}), "models.alpha.bogus"),
        (with_({"policy": {"bogus": 1}}), "policy.bogus"),
        (
            with_({"policy": {"eviction": {**CRIU, "bogus": 1}}, "checkpoint": {}}),
            "policy.eviction.bogus",
        ),
        (with_({}, alpha={"eviction": {**CRIU, "bogus": 1}}), "models.alpha.eviction.bogus"),
        (with_({"checkpoint": {"bogus": 1}}), "checkpoint.bogus"),
        (
            with_({"checkpoint": {"object_store": {"endpoint": "e", "bucket": "b", "bogus": 1}}}),
            "checkpoint.object_store.bogus",
        ),
        (with_({"gpu": {"bogus": 1}}), "gpu.bogus"),
        (with_({"supervision": {"bogus": 1}}), "supervision.bogus"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_unknown_key_is_rejected_at_every_level(raw: dict[str, Any], where: str) -> None:
    """A misspelt key anywhere is an error naming its full path, not silently ignored."""
    assert f"{where}: unknown key" in errors_of(raw)


# --- unknown names ---------------------------------------------------------------------


def test_unknown_policy_type_is_rejected() -> None:
    """policy_type must be one of fifo, cost_aware, time_slice."""
    errors = errors_of(with_({"policy": {"policy_type": "lru"}}))
    assert len(errors) == 1
    assert errors[0].startswith("policy.policy_type:")


@pytest.mark.parametrize("axis", ["weights", "process"])
def test_unknown_eviction_strategy_name_is_rejected(axis: str) -> None:
    """Both eviction axes accept only their documented names."""
    eviction = {"weights": "offload", "process": "keep_running", axis: "hibernate"}
    errors = errors_of(with_({}, alpha={"eviction": eviction}))
    assert len(errors) == 1
    assert errors[0].startswith(f"models.alpha.eviction.{axis}:")


def test_all_known_policy_types_are_accepted() -> None:
    """fifo, cost_aware and time_slice all validate."""
    for name in ("fifo", "cost_aware", "time_slice"):
        config, _ = parse_config(with_({"policy": {"policy_type": name}}))
        assert config.policy.policy_type == name


# --- port collisions -------------------------------------------------------------------


def test_two_models_on_one_port_collide() -> None:
    """Two models may not share a backend port."""
    errors = errors_of(with_({}, beta={"port": 8001}))
    assert errors == ["models.beta.port: port 8001 is already used by models.alpha.port"]


@pytest.mark.parametrize("field", ["port", "metrics_port", "admin_port"])
def test_model_port_colliding_with_a_daemon_port_is_rejected(field: str) -> None:
    """A model may not take the proxy, metrics or admin port."""
    errors = errors_of(with_({field: 8001}))
    assert len(errors) == 1
    assert "port 8001" in errors[0]
    assert field in errors[0]


@pytest.mark.parametrize(
    ("first", "second"),
    [("port", "metrics_port"), ("port", "admin_port"), ("metrics_port", "admin_port")],
)
def test_daemon_ports_may_not_collide(first: str, second: str) -> None:
    """Proxy, metrics and admin ports are pairwise distinct."""
    errors = errors_of(with_({first: 7000, second: 7000}))
    assert len(errors) == 1
    assert "port 7000" in errors[0]


def test_metrics_port_zero_disables_metrics_and_claims_no_port() -> None:
    """metrics_port 0 turns metrics off, so it cannot collide with anything."""
    config, _ = parse_config(with_({"metrics_port": 0, "admin_port": 0}))
    assert config.metrics_port == 0


def test_collision_is_reported_even_when_the_schema_fails() -> None:
    """A port clash is listed beside schema errors, not hidden behind them."""
    errors = errors_of(with_({"bogus": 1}, beta={"port": 8001}))
    assert "bogus: unknown key" in errors
    assert any("port 8001 is already used" in e for e in errors)


@pytest.mark.parametrize("value", [True, "8001", 8001.5, 0, 70000])
def test_model_port_must_be_a_real_port_number(value: object) -> None:
    """Booleans, strings, fractions and out-of-range numbers are not ports."""
    errors = errors_of(with_({}, alpha={"port": value}))
    assert any(e.startswith("models.alpha.port:") for e in errors)


# --- checkpoint section ----------------------------------------------------------------


@pytest.mark.parametrize("eviction", [CUDA_SUSPEND, CRIU], ids=["cuda_suspend", "checkpoint"])
def test_checkpoint_strategy_without_checkpoint_section_is_rejected(
    eviction: dict[str, str],
) -> None:
    """cuda_suspend and checkpoint need the tool paths in a top-level `checkpoint` section."""
    errors = errors_of(with_({}, alpha={"eviction": eviction}))
    assert len(errors) == 1
    assert errors[0].startswith("models.alpha:")
    assert "`checkpoint` section" in errors[0]
    parse_config(with_({"checkpoint": {}}, alpha={"eviction": eviction}))


def test_checkpoint_strategy_from_policy_default_without_section_is_rejected() -> None:
    """The policy-level default counts too: every model inheriting it is named."""
    errors = errors_of(with_({"policy": {"eviction": CRIU}}))
    assert len(errors) == 2
    assert all("policy.eviction (the default)" in e for e in errors)
    assert {e.split(":")[0] for e in errors} == {"models.alpha", "models.beta"}


def test_policy_default_checkpoint_strategy_is_fine_when_every_model_overrides_it() -> None:
    """A default that no model uses needs no checkpoint section."""
    own = {"weights": "offload", "process": "keep_running"}
    parse_config(
        with_({"policy": {"eviction": CRIU}}, alpha={"eviction": own}, beta={"eviction": own})
    )


def test_checkpoint_path_without_checkpoint_section_is_rejected() -> None:
    """A pre-baked image needs CRIU, so it needs the `checkpoint` section."""
    errors = errors_of(with_({}, alpha={"checkpoint_path": "/images/alpha"}))
    assert errors == ["models.alpha.checkpoint_path: needs a top-level `checkpoint` section"]


# --- admin exposure --------------------------------------------------------------------


def test_non_loopback_admin_without_token_is_rejected() -> None:
    """An admin API reachable from the network must require a token."""
    errors = errors_of(with_({"admin_port": 3001, "admin_host": "0.0.0.0"}))
    assert len(errors) == 1
    assert errors[0].startswith("admin_host:")
    assert "admin_token_env" in errors[0]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_admin_without_token_is_allowed(host: str) -> None:
    """Loopback binds need no token."""
    parse_config(with_({"admin_port": 3001, "admin_host": host}))


def test_non_loopback_admin_with_token_is_allowed() -> None:
    """Naming the token's environment variable makes a public admin bind acceptable."""
    parse_config(
        with_({"admin_port": 3001, "admin_host": "0.0.0.0", "admin_token_env": "GPUMUX_TOKEN"})
    )


def test_non_loopback_admin_host_without_admin_port_is_allowed() -> None:
    """With the admin API off, its host is irrelevant."""
    parse_config(with_({"admin_host": "0.0.0.0"}))


# --- eviction pairs --------------------------------------------------------------------


def test_retain_keep_running_is_rejected_with_a_reason() -> None:
    """An eviction that frees nothing is an error that says why."""
    errors = errors_of(
        with_({}, alpha={"eviction": {"weights": "retain", "process": "keep_running"}})
    )
    assert len(errors) == 1
    assert errors[0].startswith("models.alpha.eviction:")
    assert "frees no GPU memory" in errors[0]
    nonsense = EvictionConfig.parse("retain+keep_running")
    assert nonsense.nonsense_reason() is not None


def test_retain_keep_running_as_policy_default_is_rejected() -> None:
    """The same rule holds for the default eviction."""
    raw = with_({"policy": {"eviction": {"weights": "retain", "process": "keep_running"}}})
    errors = errors_of(raw)
    assert all("policy.eviction (the default)" in e for e in errors)
    assert len(errors) == 2


def test_only_retain_keep_running_is_nonsense() -> None:
    """Every other weights+process pair is a useful eviction."""
    for weights in WeightStrategy:
        for process in ProcessStrategy:
            pair = EvictionConfig(weights=weights, process=process)
            useless = weights is WeightStrategy.RETAIN and process is ProcessStrategy.KEEP_RUNNING
            assert (pair.nonsense_reason() is not None) == useless, str(pair)


@pytest.mark.parametrize(
    "text",
    [f"{w.value}+{p.value}" for w in WeightStrategy for p in ProcessStrategy],
)
def test_eviction_parse_round_trips_every_pair(text: str) -> None:
    """`WEIGHTS+PROCESS` parses to the pair and prints back unchanged."""
    parsed = EvictionConfig.parse(text)
    assert str(parsed) == text
    assert parsed == EvictionConfig(
        weights=WeightStrategy(text.split("+")[0]), process=ProcessStrategy(text.split("+")[1])
    )


@pytest.mark.parametrize("text", ["discard", "discard+", "+stop", "drop+stop", "discard+nap", ""])
def test_eviction_parse_rejects_malformed_text(text: str) -> None:
    """Anything but two known names joined by `+` is a ValueError."""
    with pytest.raises(ValueError, match=r"WEIGHTS\+PROCESS|is not a valid"):
        EvictionConfig.parse(text)


def test_policy_default_eviction_applies_to_models_without_their_own() -> None:
    """`policy.eviction` is what `eviction_for` returns for a model that sets none."""
    raw = with_(
        {"policy": {"eviction": {"weights": "discard", "process": "stop"}}},
        beta={"eviction": {"weights": "offload", "process": "keep_running"}},
    )
    config, _ = parse_config(raw)
    assert str(config.eviction_for("alpha")) == "discard+stop"
    assert str(config.eviction_for("beta")) == "offload+keep_running"


def test_default_eviction_is_offload_keep_running() -> None:
    """Without any eviction set, models offload and keep running."""
    config, _ = parse_config(base())
    assert str(config.eviction_for("alpha")) == "offload+keep_running"


# --- all at once -----------------------------------------------------------------------


def test_all_schema_problems_are_reported_at_once() -> None:
    """Several schema mistakes in different places come back in one ConfigProblems."""
    raw = with_(
        {"bogus": 1, "policy": {"policy_type": "lru", "max_wait_secs": -1}},
        alpha={"port": "x"},
        beta={"model_path": ""},
    )
    errors = errors_of(raw)
    for where in ("bogus", "policy.policy_type", "policy.max_wait_secs", "models.alpha.port"):
        assert any(e.startswith(f"{where}:") for e in errors), where
    assert any(e.startswith("models.beta.model_path:") for e in errors)


def test_all_cross_field_problems_are_reported_at_once() -> None:
    """Collisions, exposure and checkpoint rules are all listed together, warnings kept."""
    raw = with_(
        {"admin_port": 3001, "admin_host": "0.0.0.0", "metrics_port": 3000},
        alpha={"eviction": CUDA_SUSPEND, "extra_args": ["-tp", "2"], "gpus": [0, 1]},
        beta={"checkpoint_path": "/img", "port": 3001},
    )
    with pytest.raises(ConfigProblems) as info:
        parse_config(raw)
    errors = info.value.errors
    assert len(errors) == 5, errors
    assert any(e.startswith("metrics_port: port 3000") for e in errors)
    assert any(e.startswith("models.beta.port: port 3001") for e in errors)
    assert any(e.startswith("admin_host:") for e in errors)
    assert any(e.startswith("models.alpha:") for e in errors)
    assert any(e.startswith("models.beta.checkpoint_path:") for e in errors)
    assert len(info.value.warnings) == 2
    assert str(info.value) == "\n".join(errors)


def test_non_object_document_is_one_clear_error() -> None:
    """A JSON array or string at the top level is rejected, not crashed on."""
    assert len(errors_of([1, 2])) == 1
    assert len(errors_of("models")) == 1


def test_empty_models_is_rejected() -> None:
    """At least one model must be configured."""
    assert any(e.startswith("models:") for e in errors_of({"models": {}}))


def test_missing_model_path_and_port_are_rejected() -> None:
    """model_path and port are required."""
    errors = errors_of({"models": {"alpha": {}}})
    assert any(e.startswith("models.alpha.model_path:") for e in errors)
    assert any(e.startswith("models.alpha.port:") for e in errors)


@pytest.mark.parametrize("flag", ["--host", "--port", "--served-model-name", "--enable-sleep-mode"])
def test_flags_gpumux_sets_itself_are_rejected_in_extra_args(flag: str) -> None:
    """gpumux adds these flags; a second copy in extra_args would fight it."""
    errors = errors_of(with_({}, alpha={"extra_args": [f"{flag}=x"]}))
    assert errors == [f"models.alpha.extra_args: {flag} is set by gpumux; remove it"]


def test_empty_vllm_command_is_rejected() -> None:
    """vllm_command must name a program."""
    assert errors_of(with_({"vllm_command": "  "})) == ["vllm_command: must name a program"]
    assert errors_of(with_({"vllm_command": []})) == ["vllm_command: must name a program"]


@pytest.mark.parametrize("bad", [0, -1, "soon"])
def test_header_timeout_defaults_to_15_seconds_and_must_be_positive(bad: object) -> None:
    """`header_timeout_secs`, every listener's request-head deadline, is 15 s unless set;
    zero or less (which would close every connection) and non-numbers are refused."""
    assert parse_config(base())[0].header_timeout_secs == 15
    assert parse_config(with_({"header_timeout_secs": 2.5}))[0].header_timeout_secs == 2.5
    errors = errors_of(with_({"header_timeout_secs": bad}))
    assert len(errors) == 1, errors
    assert errors[0].startswith("header_timeout_secs:"), errors


# --- warnings --------------------------------------------------------------------------


@pytest.mark.parametrize("eviction", [CUDA_SUSPEND, CRIU], ids=["cuda_suspend", "checkpoint"])
def test_tp_with_suspend_or_checkpoint_warns_about_each_missing_flag(
    eviction: dict[str, str],
) -> None:
    """TP>1 with cuda_suspend/checkpoint warns once per missing NCCL-safety flag."""
    raw = with_({"checkpoint": {}}, alpha={"eviction": eviction, "extra_args": ["-tp", "2"]})
    warnings = warnings_of(raw)
    assert len(warnings) == 2
    assert any("--enforce-eager" in w for w in warnings)
    assert any("--disable-custom-all-reduce" in w for w in warnings)

    raw["models"]["alpha"]["extra_args"] += ["--enforce-eager"]
    assert [w for w in warnings_of(raw) if "--" in w] == [
        w for w in warnings if "--disable-custom-all-reduce" in w
    ]

    raw["models"]["alpha"]["extra_args"] += ["--disable-custom-all-reduce"]
    assert warnings_of(raw) == []


def test_tp_one_with_suspend_does_not_warn() -> None:
    """The flags only matter with more than one worker."""
    assert warnings_of(with_({"checkpoint": {}}, alpha={"eviction": CUDA_SUSPEND})) == []


def test_tp_with_sleep_only_does_not_warn() -> None:
    """keep_running with TP>1 needs neither flag."""
    assert warnings_of(with_({}, alpha={"extra_args": ["-tp", "2"]})) == []


def test_tp_warning_via_policy_default_eviction() -> None:
    """The TP warning follows the default eviction, not only a model's own."""
    raw = with_(
        {"checkpoint": {}, "policy": {"eviction": CUDA_SUSPEND}}, alpha={"extra_args": ["-tp", "2"]}
    )
    warnings = warnings_of(raw)
    assert len(warnings) == 2
    assert all(w.startswith("models.alpha:") for w in warnings)


@pytest.mark.parametrize("weights", ["offload", "discard"])
def test_sleep_eviction_with_sleep_mode_disabled_warns(weights: str) -> None:
    """offload/discard rely on vLLM's sleep mode, which enable_sleep_mode=false turns off."""
    raw = with_(
        {},
        alpha={
            "enable_sleep_mode": False,
            "eviction": {"weights": weights, "process": "keep_running"},
        },
    )
    warnings = warnings_of(raw)
    assert len(warnings) == 1
    assert "enable_sleep_mode is false" in warnings[0]


def test_sleep_mode_disabled_with_retain_stop_does_not_warn() -> None:
    """retain+stop never calls /sleep, so sleep mode is not needed."""
    raw = with_(
        {}, alpha={"enable_sleep_mode": False, "eviction": {"weights": "retain", "process": "stop"}}
    )
    assert warnings_of(raw) == []


def test_sleep_mode_disabled_with_default_eviction_warns() -> None:
    """The default (offload+keep_running) uses sleep, so disabling sleep mode warns."""
    assert len(warnings_of(with_({}, alpha={"enable_sleep_mode": False}))) == 1


def test_weights_step_with_stop_warns_that_it_is_skipped() -> None:
    """discard+stop behaves as retain+stop; the operator is told."""
    warnings = warnings_of(with_({}, alpha={"eviction": {"weights": "discard", "process": "stop"}}))
    assert len(warnings) == 1
    assert "skips the weights step" in warnings[0]


@pytest.mark.parametrize("key", ["access_key", "secret_key"])
def test_object_store_keys_in_file_warn(key: str) -> None:
    """Secrets written into the config file draw a warning pointing at the credential chain."""
    store = {
        "endpoint": "http://127.0.0.1:9000",
        "bucket": "images",
        "manifest_key_env": "GPUMUX_IMAGE_KEY",
        key: "x",
    }
    warnings = warnings_of(with_({"checkpoint": {"object_store": store}}))
    assert len(warnings) == 1
    assert warnings[0].startswith("checkpoint.object_store:")


def test_object_store_with_env_keys_and_a_manifest_key_does_not_warn() -> None:
    """An object store relying on the environment, with signed images, is silent."""
    store = {
        "endpoint": "http://127.0.0.1:9000",
        "bucket": "images",
        "manifest_key_env": "GPUMUX_IMAGE_KEY",
    }
    assert warnings_of(with_({"checkpoint": {"object_store": store}})) == []


def test_object_store_without_a_manifest_key_warns_images_are_unauthenticated() -> None:
    """`criu restore` runs an image as root: unauthenticated S3 images draw a warning."""
    store = {"endpoint": "http://127.0.0.1:9000", "bucket": "images"}
    warnings = warnings_of(with_({"checkpoint": {"object_store": store}}))
    assert len(warnings) == 1
    assert "manifest_key_env" in warnings[0]
    assert "not authenticated" in warnings[0]


def test_secret_env_names_cover_every_gpumux_secret() -> None:
    """The names stripped from children: API keys, admin token and the image signing key."""
    store = {"endpoint": "http://e", "bucket": "b", "manifest_key_env": "GPUMUX_IMAGE_KEY"}
    raw = with_(
        {
            "api_keys_env": "GPUMUX_KEYS",
            "admin_token_env": "GPUMUX_ADMIN",
            "checkpoint": {"object_store": store},
        }
    )
    config, _ = parse_config(raw)
    assert config.secret_env_names == ["GPUMUX_KEYS", "GPUMUX_ADMIN", "GPUMUX_IMAGE_KEY"]
    assert parse_config(with_({}))[0].secret_env_names == []


# --- derived values --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "tp"),
    [
        ((), 1),
        (("--tensor-parallel-size", "2"), 2),
        (("--tensor-parallel-size=2",), 2),
        (("-tp", "4"), 4),
        (("-tp=4",), 4),
        (("-tp", "2", "--tensor-parallel-size", "4"), 4),
        (("--tensor-parallel-size-extra", "8"), 1),
    ],
)
def test_tensor_parallel_size_is_derived_from_extra_args(args: tuple[str, ...], tp: int) -> None:
    """Both `--flag N` and `--flag=N`, long and short, last one wins, like vLLM's argparse."""
    assert model(*args).tensor_parallel_size == tp


@pytest.mark.parametrize(
    ("args", "util"),
    [
        ((), 0.9),
        (("--gpu-memory-utilization", "0.45"), 0.45),
        (("--gpu-memory-utilization=0.3",), 0.3),
        (("--gpu-memory-utilization", "0.5", "--gpu-memory-utilization=0.6"), 0.6),
    ],
)
def test_gpu_memory_utilization_is_derived_from_extra_args(
    args: tuple[str, ...], util: float
) -> None:
    """Utilization defaults to vLLM's 0.9 and follows either flag spelling."""
    assert model(*args).gpu_memory_utilization == pytest.approx(util)


@pytest.mark.parametrize(
    ("args", "gpus"), [((), (0,)), (("-tp", "2"), (0, 1)), (("-tp=4",), (0, 1, 2, 3))]
)
def test_default_gpus_are_the_first_tp_devices(
    args: tuple[str, ...], gpus: tuple[int, ...]
) -> None:
    """Without `gpus`, a model runs on devices 0 .. tp-1."""
    assert model(*args).gpu_indices == gpus


def test_explicit_gpus_are_kept() -> None:
    """An explicit `gpus` list wins over the default."""
    assert model("-tp", "2", gpus=[2, 3]).gpu_indices == (2, 3)


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"extra_args": ["-tp", "two"]}, "must be numbers"),
        ({"extra_args": ["--gpu-memory-utilization", "most"]}, "must be numbers"),
        ({"extra_args": ["-tp", "0"]}, "at least 1"),
        ({"extra_args": ["--gpu-memory-utilization", "1.5"]}, "must be in (0, 1]"),
        ({"extra_args": ["--gpu-memory-utilization=0"]}, "must be in (0, 1]"),
        ({"extra_args": ["-tp", "2"], "gpus": [0]}, "lists 1 GPUs but tensor parallel size is 2"),
        ({"gpus": [0, 0], "extra_args": ["-tp", "2"]}, "lists a GPU twice"),
        ({"gpus": [-1]}, "non-negative"),
    ],
)
def test_bad_derived_values_are_errors(fields: dict[str, Any], fragment: str) -> None:
    """Derived TP, utilization and GPU lists are checked, each with its own message."""
    errors = errors_of(with_({}, alpha=fields))
    assert any(fragment in e for e in errors), errors


def test_non_numeric_tp_with_suspend_is_an_error_not_a_crash() -> None:
    """A misspelt -tp under a checkpoint strategy is reported (the warning pass must not raise)."""
    raw = with_({"checkpoint": {}}, alpha={"eviction": CUDA_SUSPEND, "extra_args": ["-tp", "x"]})
    assert any("must be numbers" in e for e in errors_of(raw))


def test_gpus_beyond_the_fake_gpu_count_are_rejected() -> None:
    """With the fake probe, a model may only name GPUs the fake ledger has."""
    raw = with_({"gpu": {"probe": "fake", "fake_capacity_gib": [80]}}, alpha={"gpus": [1]})
    assert errors_of(raw) == ["models.alpha.gpus: uses GPU 1 but gpu.fake_capacity_gib lists 1"]


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("vllm", ["vllm"]),
        ("python -m vllm.entrypoints.cli.main", ["python", "-m", "vllm.entrypoints.cli.main"]),
        ("'/opt/my vllm/bin/vllm'", ["/opt/my vllm/bin/vllm"]),
        (["/opt/my vllm/bin/vllm", "--x"], ["/opt/my vllm/bin/vllm", "--x"]),
    ],
)
def test_vllm_command_string_is_shlex_split_and_list_kept(
    command: str | list[str], argv: list[str]
) -> None:
    """A string vllm_command is split like a shell would; a list is taken as is."""
    config, _ = parse_config(with_({"vllm_command": command}))
    assert config.vllm_argv == argv


def test_config_is_frozen() -> None:
    """Validated config is immutable (owners read it, nobody edits it)."""
    config, _ = parse_config(base())
    with pytest.raises(ValueError, match="frozen"):
        config.port = 1


# --- loader ----------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gpumux.json"
    path.write_text(text, encoding="utf-8")
    return path


def test_loader_reads_a_valid_file(tmp_path: Path) -> None:
    """load_config returns the config and its warnings."""
    raw = with_({}, alpha={"eviction": {"weights": "discard", "process": "stop"}})
    config, warnings = load_config(write(tmp_path, json.dumps(raw)))
    assert set(config.models) == {"alpha", "beta"}
    assert len(warnings) == 1


def test_loader_accepts_a_str_path(tmp_path: Path) -> None:
    """A plain string path works as well as a Path."""
    config, _ = load_config(str(write(tmp_path, json.dumps(base()))))
    assert config.models["beta"].port == 8002


def test_loader_reports_a_missing_file(tmp_path: Path) -> None:
    """A missing file is one clear problem naming the path."""
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigProblems) as info:
        load_config(missing)
    assert info.value.errors == [f"{missing}: no such file"]
    assert info.value.warnings == []


def test_loader_reports_a_directory(tmp_path: Path) -> None:
    """Pointing at a directory is a problem, not a crash."""
    with pytest.raises(ConfigProblems) as info:
        load_config(tmp_path)
    assert "is a directory" in info.value.errors[0]


def test_loader_reports_json_errors_with_line_and_column(tmp_path: Path) -> None:
    """Broken JSON names the file, line and column of the mistake."""
    path = write(tmp_path, '{\n  "models": {\n    "a": {"port": 8001,}\n  }\n}\n')
    with pytest.raises(ConfigProblems) as info:
        load_config(path)
    (error,) = info.value.errors
    assert error.startswith(f"{path}:3:")
    assert "not valid JSON" in error


def test_loader_reports_an_empty_file(tmp_path: Path) -> None:
    """An empty file is not JSON, with a position."""
    path = write(tmp_path, "")
    with pytest.raises(ConfigProblems) as info:
        load_config(path)
    assert info.value.errors[0].startswith(f"{path}:1:1: not valid JSON")


def test_loader_reports_non_utf8(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are a problem, not a traceback."""
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"models": "\xff"}')
    with pytest.raises(ConfigProblems) as info:
        load_config(path)
    assert "not UTF-8" in info.value.errors[0]


def test_loader_tolerates_a_byte_order_mark(tmp_path: Path) -> None:
    """Editors that write a UTF-8 BOM do not break the config."""
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(base()).encode())
    config, _ = load_config(path)
    assert "alpha" in config.models


def test_loader_reports_duplicate_keys_beside_schema_errors(tmp_path: Path) -> None:
    """A model alias written twice would silently drop one model; it is an error."""
    text = (
        '{"models": {"alpha": {"model_path": "a", "port": 8001},'
        ' "alpha": {"model_path": "b", "port": 8002}}, "bogus": 1}'
    )
    with pytest.raises(ConfigProblems) as info:
        load_config(write(tmp_path, text))
    assert info.value.errors[0].startswith("alpha: written twice")
    assert "bogus: unknown key" in info.value.errors


def test_loader_reports_duplicate_keys_in_an_otherwise_valid_file(tmp_path: Path) -> None:
    """Duplicates alone are still an error, and warnings are kept."""
    text = '{"port": 3000, "port": 3000, "models": {"a": {"model_path": "a", "port": 8001}}}'
    with pytest.raises(ConfigProblems) as info:
        load_config(write(tmp_path, text))
    assert info.value.errors == ["port: written twice in one JSON object (the last one wins)"]


def test_loader_passes_validation_problems_through(tmp_path: Path) -> None:
    """Schema and cross-field problems reach the caller unchanged."""
    path = write(tmp_path, json.dumps(with_({}, beta={"port": 8001})))
    with pytest.raises(ConfigProblems) as info:
        load_config(path)
    assert info.value.errors == ["models.beta.port: port 8001 is already used by models.alpha.port"]
