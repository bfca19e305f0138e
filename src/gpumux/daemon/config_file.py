"""Reading a config file from disk: the one impure step before `config.parse_config`.

Owns: turning a path into a validated `Config` plus warnings, and turning the ways a file
can be unusable (missing, unreadable, not UTF-8, not JSON, a key written twice) into
`ConfigProblems` with the file name and, for JSON errors, line and column.
Does not: resolve secrets, print, or exit (the CLI does).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from gpumux.core.config import Config
from gpumux.core.config_rules import ConfigProblems, parse_config


def load_config(path: str | Path) -> tuple[Config, list[str]]:
    """Read, decode and validate the JSON config at `path`; return it and its warnings.

    Raises ConfigProblems listing every problem found (the file's own, then the schema's).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigProblems([f"{path}: no such file"], []) from None
    except IsADirectoryError:
        raise ConfigProblems([f"{path}: is a directory, not a config file"], []) from None
    except UnicodeDecodeError as exc:
        raise ConfigProblems(
            [f"{path}: not UTF-8 text (byte {exc.start} cannot be decoded)"], []
        ) from None
    except OSError as exc:
        raise ConfigProblems([f"{path}: cannot be read ({exc.strerror or exc})"], []) from None

    duplicates: list[str] = []
    try:
        raw = json.loads(text, object_pairs_hook=_RejectDuplicates(duplicates))
    except json.JSONDecodeError as exc:
        raise ConfigProblems(
            [f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}"], []
        ) from None

    try:
        config, warnings = parse_config(raw)
    except ConfigProblems as exc:
        raise ConfigProblems(duplicates + exc.errors, exc.warnings) from None
    problems = duplicates + list(adapter_path_errors(config))
    if problems:
        raise ConfigProblems(problems, warnings)
    return config, warnings


def adapter_path_errors(config: Config) -> Iterator[str]:
    """Each LoRA adapter path that is not a directory holding `adapter_config.json`.

    An error, not a warning: vLLM would refuse the load at the adapter's first request,
    long after start, and only that request would say why; at load time `validate`
    exits 2 and a SIGHUP keeps the old config serving.
    """
    for name, model in config.models.items():
        for adapter, path in model.adapters.items():
            where = f"models.{name}.adapters.{adapter}"
            directory = Path(path).expanduser()
            if not directory.is_dir():
                yield f"{where}: {path} is not a directory (a PEFT adapter's directory)"
            elif not (directory / "adapter_config.json").is_file():
                yield f"{where}: {path} holds no adapter_config.json (not a PEFT adapter)"


class _RejectDuplicates:
    """A `json.loads` object hook that records keys written twice in one object.

    Plain `json.loads` keeps the last value silently, so two models under one alias
    would quietly become one.
    """

    def __init__(self, sink: list[str]) -> None:
        self._sink = sink

    def __call__(self, pairs: list[tuple[str, object]]) -> dict[str, object]:
        result: dict[str, object] = {}
        for key, value in pairs:
            if key in result:
                self._sink.append(f"{key}: written twice in one JSON object (the last one wins)")
            result[key] = value
        return result
