"""Aliases: validation (every problem at once, `gpumux validate` exits 2), resolution, and
the body rewrite that makes vLLM accept an aliased request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gpumux.cli.main import main
from gpumux.core.config import json_schema
from gpumux.core.config_rules import ConfigProblems, parse_config
from gpumux.http.aliases import alias_entries, resolve, with_model

pytestmark = pytest.mark.unit


def raw(**aliases: list[str]) -> dict[str, Any]:
    models: dict[str, Any] = {
        "alpha": {"model_path": "org/alpha", "port": 8001},
        "beta": {"model_path": "org/beta", "port": 8002},
    }
    for name, names in aliases.items():
        models[name]["aliases"] = names
    return {"models": models}


def test_aliases_resolve_to_their_model() -> None:
    config, _ = parse_config(raw(alpha=["gpt-4o-mini", "small"]))
    assert config.resolve_model("alpha") == "alpha"
    assert config.resolve_model("small") == "alpha"
    assert config.resolve_model("nope") is None
    assert resolve(config, "gpt-4o-mini").via_alias == "gpt-4o-mini"
    assert resolve(config, "alpha").via_alias is None
    unknown = resolve(config, "nope")
    assert not unknown.known
    assert unknown.model == "nope"


def test_every_alias_problem_is_listed_at_once() -> None:
    with pytest.raises(ConfigProblems) as caught:
        parse_config(raw(alpha=["beta", "x", "x", " "], beta=["x"]))
    errors = caught.value.errors
    assert "models.alpha.aliases: 'beta' is already the name of model 'beta'" in errors
    assert "models.alpha.aliases: 'x' is listed twice" in errors
    assert "models.alpha.aliases: an alias must be a non-empty name" in errors
    assert "models.beta.aliases: 'x' is already an alias of model 'alpha'" in errors
    assert len(errors) == 4


def test_validate_exits_2_listing_alias_collisions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw(alpha=["beta"], beta=["alpha"])))
    assert main(["validate", str(path)]) == 2
    out = capsys.readouterr()
    text = out.out + out.err
    assert "models.alpha.aliases" in text
    assert "models.beta.aliases" in text


def test_rewrite_sets_model_and_keeps_everything_else() -> None:
    body = json.dumps(
        {"model": "small", "temperature": 0.1, "seed": 2**62, "messages": [{"content": "héllo"}]},
        ensure_ascii=False,
    ).encode()
    rewritten = json.loads(with_model(body, "alpha"))
    assert rewritten == {**json.loads(body), "model": "alpha"}
    assert "héllo".encode() in with_model(body, "alpha")


def test_models_list_marks_aliases() -> None:
    config, _ = parse_config(raw(beta=["b1"]))
    assert alias_entries(config, 7) == [
        {
            "id": "b1",
            "object": "model",
            "created": 7,
            "owned_by": "gpumux",
            "root": "org/beta",
            "alias_of": "beta",
        }
    ]


def test_schema_describes_aliases() -> None:
    props = json_schema()["$defs"]["ModelConfig"]["properties"]  # type: ignore[index]
    assert "aliases" in props
