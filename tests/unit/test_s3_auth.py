"""Image authentication (`s3_auth`): the manifest HMAC, its key, and where the key may go."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from gpumux.backends.effects import backend_env
from gpumux.checkpoint.images import ImageInvalid
from gpumux.checkpoint.s3 import auth as s3_auth
from gpumux.checkpoint.s3.auth import ImageUnauthenticated
from gpumux.core.config import ObjectStoreConfig
from gpumux.core.config_rules import ConfigProblems, parse_config

pytestmark = pytest.mark.unit

KEY = b"k" * 32
MANIFEST = b'{\n "format": 1,\n "model": "a",\n "files": []\n}\n'
WHAT = "s3://bucket/prefix/a/v1/"


def store(**extra: Any) -> ObjectStoreConfig:
    return ObjectStoreConfig(endpoint="http://127.0.0.1:9000", bucket="b", **extra)


def test_sign_is_hex_hmac_sha256_of_the_exact_bytes() -> None:
    """Operators can check a signature with any HMAC tool (e.g. `openssl dgst -hmac`)."""
    assert s3_auth.sign(KEY, MANIFEST) == hmac.new(KEY, MANIFEST, hashlib.sha256).hexdigest()
    assert len(s3_auth.sign(KEY, MANIFEST)) == 64


def test_verify_accepts_the_signature_with_surrounding_whitespace() -> None:
    signature = s3_auth.sign(KEY, MANIFEST).encode()
    s3_auth.verify(KEY, MANIFEST, signature, what=WHAT)
    s3_auth.verify(KEY, MANIFEST, signature.upper() + b"\n", what=WHAT)


@pytest.mark.parametrize(
    ("manifest", "key", "why"),
    [
        (MANIFEST.replace(b'"a"', b'"b"'), KEY, "altered manifest"),
        (MANIFEST + b" ", KEY, "one byte appended"),
        (MANIFEST, b"x" * 32, "signed with another key"),
    ],
)
def test_verify_rejects_an_altered_manifest_or_another_key(
    manifest: bytes, key: bytes, why: str
) -> None:
    signature = s3_auth.sign(KEY, MANIFEST).encode()
    with pytest.raises(ImageUnauthenticated, match="signature does not match") as raised:
        s3_auth.verify(key, manifest, signature, what=WHAT)
    assert WHAT in str(raised.value), why
    assert KEY.decode() not in str(raised.value)


@pytest.mark.parametrize("signature", [None, b"", b"0" * 64, b"zz", b"a" * 10_000])
def test_verify_rejects_a_missing_or_bogus_signature(signature: bytes | None) -> None:
    with pytest.raises(ImageUnauthenticated) as raised:
        s3_auth.verify(KEY, MANIFEST, signature, what=WHAT)
    assert isinstance(raised.value, ImageInvalid)  # callers treating bad images alike
    if signature is None:
        assert "has no manifest.json.hmac" in str(raised.value)


def test_no_key_env_means_no_key() -> None:
    assert s3_auth.manifest_key(store(), {}) is None


def test_the_key_comes_from_the_named_variable() -> None:
    environ = {"GPUMUX_IMAGE_KEY": " 0123456789abcdef0123 \n"}
    key = s3_auth.manifest_key(store(manifest_key_env="GPUMUX_IMAGE_KEY"), environ)
    assert key == b"0123456789abcdef0123"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "GPUMUX_IMAGE_KEY is empty or unset"),
        ({"GPUMUX_IMAGE_KEY": "  "}, "GPUMUX_IMAGE_KEY is empty or unset"),
        ({"GPUMUX_IMAGE_KEY": "short"}, "shorter than 16 bytes"),
    ],
)
def test_a_named_but_unusable_key_is_a_config_problem(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigProblems) as problems:
        s3_auth.manifest_key(store(manifest_key_env="GPUMUX_IMAGE_KEY"), environ)
    (error,) = problems.value.errors
    assert error.startswith("checkpoint.object_store.manifest_key_env: ")
    assert message in error
    assert "short" not in error.replace("shorter", "")  # the value itself is never echoed


def config_with_key(**model: Any) -> Any:
    raw = {
        "models": {"a": {"model_path": "m", "port": 8001, **model}},
        "checkpoint": {
            "images_dir": "/tmp/i",
            "object_store": {"endpoint": "http://e", "bucket": "b", "manifest_key_env": "VLLM_KEY"},
        },
    }
    config, _ = parse_config(raw)
    return config


def test_check_manifest_key_checks_only_configs_with_an_object_store() -> None:
    s3_auth.check_manifest_key(parse_config({"models": {"a": {"model_path": "m", "port": 1}}})[0])
    with pytest.raises(ConfigProblems, match="VLLM_KEY is empty or unset"):
        s3_auth.check_manifest_key(config_with_key(), {})
    s3_auth.check_manifest_key(config_with_key(), {"VLLM_KEY": "k" * 16})


def test_the_key_never_reaches_a_backend_even_under_an_allow_listed_name() -> None:
    """`VLLM_*` passes the allow-list, and a model's `env` may name anything: the key's
    variable is stripped from both."""
    config = config_with_key(env={"VLLM_KEY": "from-the-config"})
    parent = {"PATH": "/bin", "VLLM_KEY": "k" * 32, "VLLM_LOGGING_LEVEL": "INFO"}
    env = backend_env(config, config.models["a"], parent, None, alias="a")
    assert "VLLM_KEY" not in env
    assert env["VLLM_LOGGING_LEVEL"] == "INFO"  # the allow-list itself still works
