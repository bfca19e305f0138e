"""LoRA adapters in the config: validation (every problem at once, `gpumux validate` exits
2, paths checked at load), resolution to the base model without a body rewrite, the
`/v1/models` entries, and the child environment that turns vLLM's runtime API on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gpumux.backends.effects import backend_env
from gpumux.cli.main import main
from gpumux.core.config_rules import ConfigProblems, parse_config
from gpumux.daemon.config_file import load_config
from gpumux.http.aliases import adapter_entries, resolve
from tests.support.lora import adapter_dir

pytestmark = pytest.mark.unit

LORA_ARGS = ["--enable-lora", "--max-lora-rank", "8"]


def raw(alpha: dict[str, Any] | None = None, beta: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "models": {
            "alpha": {"model_path": "org/alpha", "port": 8001, **(alpha or {})},
            "beta": {"model_path": "org/beta", "port": 8002, **(beta or {})},
        }
    }


def test_an_adapter_resolves_to_its_model_and_keeps_its_name() -> None:
    config, _ = parse_config(raw(alpha={"extra_args": LORA_ARGS, "adapters": {"sql": "/a/sql"}}))
    resolved = resolve(config, "sql")
    assert (resolved.model, resolved.adapter, resolved.known) == ("alpha", "sql", True)
    assert resolved.via_alias is None  # the body goes to vLLM as sent: it serves `sql`
    assert resolve(config, "alpha").adapter is None
    assert config.adapter_targets == {"sql": "alpha"}
    assert config.resolve_model("sql") is None  # never a model of its own (preload, admin)


def test_adapters_are_listed_with_parent_and_root() -> None:
    config, _ = parse_config(raw(alpha={"extra_args": LORA_ARGS, "adapters": {"sql": "/a/sql"}}))
    assert adapter_entries(config, 7) == [
        {
            "id": "sql",
            "object": "model",
            "created": 7,
            "owned_by": "gpumux",
            "root": "/a/sql",
            "parent": "alpha",
        }
    ]


def test_every_adapter_problem_is_listed_at_once() -> None:
    with pytest.raises(ConfigProblems) as caught:
        parse_config(
            raw(
                alpha={
                    "extra_args": LORA_ARGS,
                    "aliases": ["small"],
                    "adapters": {"beta": "/a/1", "small": "/a/2", "x": "/a/3", " ": "/a/4"},
                },
                beta={"adapters": {"x": "/b/x", "y": ""}},
            )
        )
    errors = caught.value.errors
    assert "models.alpha.adapters: 'beta' is already the name of model 'beta'" in errors
    assert "models.alpha.adapters: 'small' is already an alias of model 'alpha'" in errors
    assert "models.alpha.adapters: an adapter name must be non-empty" in errors
    assert "models.beta.adapters: 'x' is already an adapter of model 'alpha'" in errors
    assert "models.beta.adapters.y: the adapter's path must be non-empty" in errors
    missing = [e for e in errors if "LoRA support" in e]
    assert len(missing) == 1
    assert missing[0].startswith("models.beta.adapters:")
    assert "'--enable-lora' to models.beta.extra_args" in missing[0]
    assert "--max-lora-rank" in missing[0]
    assert len(errors) == 6


def test_adapter_paths_are_checked_when_the_file_is_loaded(tmp_path: Path) -> None:
    good = adapter_dir(tmp_path, "good")
    empty = tmp_path / "empty"
    empty.mkdir()
    document = raw(
        alpha={
            "extra_args": LORA_ARGS,
            "adapters": {"good": str(good), "gone": str(tmp_path / "gone"), "bare": str(empty)},
        }
    )
    path = tmp_path / "c.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigProblems) as caught:
        load_config(path)
    assert caught.value.errors == [
        f"models.alpha.adapters.gone: {tmp_path / 'gone'} is not a directory "
        "(a PEFT adapter's directory)",
        f"models.alpha.adapters.bare: {empty} holds no adapter_config.json (not a PEFT adapter)",
    ]
    del document["models"]["alpha"]["adapters"]["gone"]
    del document["models"]["alpha"]["adapters"]["bare"]
    path.write_text(json.dumps(document))
    config, _ = load_config(path)
    assert config.models["alpha"].adapters == {"good": str(good)}


def test_validate_exits_2_when_lora_is_not_enabled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw(alpha={"adapters": {"sql": str(adapter_dir(tmp_path, "s"))}})))
    assert main(["validate", str(path)]) == 2
    out = capsys.readouterr()
    assert "'--enable-lora' to models.alpha.extra_args" in out.out + out.err


def test_adapters_change_without_restarting_the_backend() -> None:
    before, _ = parse_config(raw(alpha={"extra_args": LORA_ARGS, "adapters": {"a": "/a"}}))
    after, _ = parse_config(raw(alpha={"extra_args": LORA_ARGS, "adapters": {"b": "/b"}}))
    assert before.models["alpha"].process_key() == after.models["alpha"].process_key()


def test_the_runtime_lora_api_is_on_exactly_when_lora_is() -> None:
    config, _ = parse_config(raw(alpha={"extra_args": LORA_ARGS}))
    with_lora = backend_env(config, config.models["alpha"], {}, None)
    without = backend_env(config, config.models["beta"], {}, None)
    assert with_lora["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in without
