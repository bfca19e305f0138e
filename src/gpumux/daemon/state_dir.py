"""Where the daemon keeps its files: the state directory and the fake GPU ledger in it.

Owns: resolving the state directory (`state_dir`, else systemd's `STATE_DIRECTORY`, else
`$XDG_STATE_HOME/gpumux`) and creating the fake-probe ledger there (or at
`gpu.fake_ledger_path`).
Does not: create the directory's other contents (the child registry, logs and images
belong to their owners) or decide who may reset the ledger (the caller says).

`gpumux serve` and `gpumux serve --checkpoint` share this directory: an image keeps the
backend's log file open by path, and a restore reopens exactly that path.
"""

from __future__ import annotations

import os
from pathlib import Path

from gpumux.core.config import GIB, Config
from gpumux.gpu.fake_ledger import create_ledger


def resolve_state_dir(config: Config) -> Path:
    if config.state_dir:
        return Path(config.state_dir)
    if os.environ.get("STATE_DIRECTORY"):  # systemd StateDirectory=
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "gpumux"


def prepare_fake_ledger(config: Config, state_dir: Path, *, keep_existing: bool) -> Path | None:
    """The ledger mock backends book into, when `gpu.probe` is "fake"; else None.

    The daemon starts it afresh (its previous children are swept); a pre-bake keeps an
    existing one, because a running daemon's ledger is shared and never reset under it.
    """
    gpu = config.gpu
    if gpu.probe != "fake":
        return None
    path = (
        Path(gpu.fake_ledger_path) if gpu.fake_ledger_path else state_dir / "fake-gpu-ledger.json"
    )
    if not (keep_existing and path.exists()):
        create_ledger(path, [int(gib * GIB) for gib in gpu.fake_capacity_gib])
    return path
