"""The child environment keeps what vLLM needs and never leaks credentials."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import pytest

from gpumux.procs.environment import child_environment, rejected_names

pytestmark = pytest.mark.unit

PARENT = {
    "PATH": "/usr/bin",
    "HOME": "/home/gpumux",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "VLLM_LOGGING_LEVEL": "DEBUG",
    "CUDA_HOME": "/usr/local/cuda",
    "HF_HOME": "/models/hf",
    "HF_TOKEN": "hf_secret_value",
    "TORCHINDUCTOR_CACHE_DIR": "/tmp/inductor",
    "MOCK_VLLM_LEDGER": "/run/ledger.json",
    "AWS_ACCESS_KEY_ID": "AKIA...",
    "AWS_SECRET_ACCESS_KEY": "shh",
    "GPUMUX_API_KEYS": "sk-1,sk-2",
    "GPUMUX_ADMIN_TOKEN": "admin",
    "EDITOR": "vim",
    "SSH_AUTH_SOCK": "/tmp/ssh-agent",
    "DATABASE_PASSWORD": "hunter2",
    "VLLM_API_SECRET": "inherited-secret",
}
SECRETS = ("GPUMUX_API_KEYS", "GPUMUX_ADMIN_TOKEN")


def build(
    *,
    model_env: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
    passthrough: Collection[str] = (),
) -> dict[str, str]:
    return child_environment(
        PARENT,
        model_env=model_env or {},
        secret_names=SECRETS,
        extra=extra or {},
        passthrough=passthrough,
    )


def test_allow_listed_names_and_prefixes_are_inherited() -> None:
    """Exact names and every allowed prefix family pass through unchanged."""
    env = build()
    for name in (
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "VLLM_LOGGING_LEVEL",
        "CUDA_HOME",
        "HF_HOME",
        "TORCHINDUCTOR_CACHE_DIR",
        "MOCK_VLLM_LEDGER",
    ):
        assert env[name] == PARENT[name]


def test_names_off_the_allow_list_are_dropped() -> None:
    """Unlisted variables such as EDITOR or SSH_AUTH_SOCK never reach a backend."""
    env = build()
    assert "EDITOR" not in env
    assert "SSH_AUTH_SOCK" not in env


def test_credentials_are_stripped_from_the_inherited_environment() -> None:
    """AWS_*, gpumux's own secrets and anything named like a secret are removed."""
    env = build()
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "GPUMUX_API_KEYS",
        "GPUMUX_ADMIN_TOKEN",
        "DATABASE_PASSWORD",
        "HF_TOKEN",
        "VLLM_API_SECRET",
    ):
        assert name not in env


def test_model_env_and_extra_override_inherited_values() -> None:
    """The model's env wins over the parent, and gpumux's extra wins over both."""
    env = build(
        model_env={"VLLM_LOGGING_LEVEL": "INFO", "CUDA_VISIBLE_DEVICES": "3", "MY_FLAG": "1"},
        extra={"CUDA_VISIBLE_DEVICES": "0,1", "VLLM_SERVER_DEV_MODE": "1"},
    )
    assert env["VLLM_LOGGING_LEVEL"] == "INFO"
    assert env["MY_FLAG"] == "1"
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert env["VLLM_SERVER_DEV_MODE"] == "1"


def test_model_env_may_set_a_token_explicitly() -> None:
    """A TOKEN-looking name is allowed when the operator sets it in the model's env."""
    env = build(model_env={"HF_TOKEN": "hf_from_config"})
    assert env["HF_TOKEN"] == "hf_from_config"


def test_passthrough_copies_a_named_variable_from_the_parent() -> None:
    """`passthrough` lets HF_TOKEN through from gpumux's environment without the config."""
    env = build(passthrough=["HF_TOKEN", "NOT_SET_ANYWHERE"])
    assert env["HF_TOKEN"] == "hf_secret_value"
    assert "NOT_SET_ANYWHERE" not in env


def test_aws_and_gpumux_secrets_are_stripped_even_when_asked_for() -> None:
    """AWS_* and secret_names are removed from model_env, extra and passthrough alike."""
    env = build(
        model_env={"AWS_REGION": "eu-west-1", "GPUMUX_ADMIN_TOKEN": "x", "aws_profile": "p"},
        extra={"AWS_ACCESS_KEY_ID": "AKIA"},
        passthrough=["AWS_SECRET_ACCESS_KEY", "GPUMUX_API_KEYS"],
    )
    assert not {name for name in env if name.upper().startswith("AWS_")}
    assert "GPUMUX_ADMIN_TOKEN" not in env
    assert "GPUMUX_API_KEYS" not in env


def test_rejected_names_lists_what_will_be_dropped() -> None:
    """Callers can warn about model env entries that will never reach the backend."""
    names = ["AWS_REGION", "HF_TOKEN", "GPUMUX_API_KEYS", "CUDA_VISIBLE_DEVICES"]
    assert rejected_names(names, secret_names=SECRETS) == ["AWS_REGION", "GPUMUX_API_KEYS"]


def test_the_parent_mapping_is_not_modified() -> None:
    """child_environment is pure: it returns a new dict and leaves its inputs alone."""
    before = dict(PARENT)
    env = build(extra={"PATH": "/opt/bin"})
    assert before == PARENT
    assert env is not PARENT
