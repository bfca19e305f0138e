"""Learned switch costs on disk, so a restart does not forget what switching costs.

Owns: the file `<state_dir>/switch_costs.json` (`{"version": 1, "ops": ..., "switches":
..., "samples": ...}`, the form of `SwitchCosts.to_dict()`), written atomically (temp
file in the same directory, fsync, rename, fsync of the directory) so a crash leaves the
old file or the new one, never half of one; and reading it back, where a missing file
means "nothing learned yet" and a corrupt one means "start fresh" plus a warning for the
log (a bad cache must never stop the daemon).
Does not: learn or use costs (`policy.costs`, the scheduler core) or decide when to save
(the daemon does, e.g. after each switch and at shutdown).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from gpumux.policy.costs import SwitchCosts

FILE_NAME = "switch_costs.json"
VERSION = 1


def costs_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / FILE_NAME


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not a cost")  # NaN and Infinity are not seconds


def load_costs(state_dir: str | Path) -> tuple[SwitchCosts, str | None]:
    """The saved costs and None, or fresh costs and a warning saying why the file was unusable."""
    path = costs_path(state_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return SwitchCosts(), None
    except (OSError, UnicodeDecodeError) as exc:
        return SwitchCosts(), f"{path}: cannot be read ({exc}); switch costs start fresh"
    try:
        data = json.loads(text, parse_constant=_no_constants)
    except ValueError as exc:
        return SwitchCosts(), f"{path}: not valid JSON ({exc}); switch costs start fresh"
    if not isinstance(data, dict) or data.get("version") != VERSION:
        return SwitchCosts(), f"{path}: not a version {VERSION} cost file; switch costs start fresh"
    return SwitchCosts.from_dict(data), None


def save_costs(state_dir: str | Path, costs: SwitchCosts) -> None:
    """Replace the cost file atomically. Raises OSError if the directory is not writable."""
    path = costs_path(state_dir)
    payload = json.dumps({"version": VERSION, **costs.to_dict()}, indent=2, sort_keys=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{FILE_NAME}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(payload + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (the directory entry lives in the directory)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
