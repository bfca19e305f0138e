"""Pre-baked CRIU images: `gpumux serve CONFIG --checkpoint MODEL`.

Owns: the one-shot pre-bake (start MODEL, warm it with a 1-token request, evict it with
a `*+checkpoint` eviction, wait for the image and its upload, print where it is).
Does not: serve the proxy or run the scheduler; the pre-bake drives `Backends` directly
through the same steps a switch uses. It builds no part itself: `adapters` builds the
backends side exactly as for `serve`. Adopting pre-baked images at start is
`components.initial_states`.

The pre-bake shares the daemon's state directory, because the image keeps the backend's
log file open by path and a restore reopens exactly that path. It does not sweep the
daemon's children (it keeps its own registry under `<state_dir>/prebake`) and refuses to
start when the model's port is taken (a daemon already serving it).
"""

from __future__ import annotations

import asyncio
import os
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import structlog

from gpumux.backends.effects import Backends
from gpumux.checkpoint.checkpoints import Checkpoints
from gpumux.checkpoint.criu_inventory import port_is_free
from gpumux.checkpoint.images import Image
from gpumux.checkpoint.s3.auth import check_manifest_key
from gpumux.core.config import Config, EvictionConfig, ProcessStrategy
from gpumux.core.errors import StepFailed
from gpumux.core.eviction import Step, evict_plan
from gpumux.daemon.adapters import make_checkpoints, open_backends, supervise_children
from gpumux.daemon.state_dir import prepare_fake_ledger, resolve_state_dir

log = structlog.get_logger(__name__)


class PrebakeFailed(Exception):
    pass


@dataclass(frozen=True)
class Prebaked:
    image: Image
    secs: float
    url: str | None  # where it was uploaded, if an object store is configured


async def prebake(
    config: Config, alias: str, eviction: EvictionConfig, state_dir: Path
) -> Prebaked:
    """Make a pre-baked image of `alias`; raise PrebakeFailed with the reason (or
    ConfigProblems, before anything starts, when the image signing key is unusable)."""
    check_manifest_key(config)
    model = config.models[alias]
    if not port_is_free(model.port):
        raise PrebakeFailed(f"port {model.port} of {alias} is in use (is gpumux serving it?)")
    own_dir = state_dir / "prebake"
    own_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    async with AsyncExitStack() as stack:
        # The daemon's parts, built by the same functions; only the registry is our own.
        reaper = supervise_children(stack, own_dir)
        checkpoints = make_checkpoints(config, state_dir / "logs")
        if checkpoints is None:
            raise PrebakeFailed("pre-baking needs a top-level `checkpoint` section")
        checkpoints.prebake = True
        parts = open_backends(
            stack,
            config,
            reaper=reaper,
            registry_dir=own_dir,
            log_dir=state_dir / "logs",
            ledger_path=prepare_fake_ledger(config, state_dir, keep_existing=True),
            checkpoints=checkpoints,
            on_exit=_log_exit,
        )
        return await _bake(parts.backends, checkpoints, alias, eviction)


async def _bake(
    backends: Backends, checkpoints: Checkpoints, alias: str, eviction: EvictionConfig
) -> Prebaked:
    """Start, warm and evict `alias` through the steps a switch uses; wait for the image."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        steps, _resting = evict_plan(eviction)
        for step in (Step.COLD_START, Step.WARMUP, *steps):
            log.info("prebake_step", model=alias, step=step.value)
            await backends.run_step(alias, step, abort_inflight=False)
        await checkpoints.catalog.settle(alias)
        image = checkpoints.catalog.entry(alias).current
        if image is None:
            raise PrebakeFailed("the dump produced no image (see the log)")
        url = None
        store = checkpoints.catalog.store
        if store is not None:
            await checkpoints.catalog.housekeeping()
            if not await checkpoints.catalog.upload(image):
                raise PrebakeFailed(f"the image is at {image.path} but its upload failed")
            url = store.url(alias, image.version)
        return Prebaked(image, loop.time() - started, url)
    except StepFailed as exc:
        raise PrebakeFailed(str(exc)) from exc


def _log_exit(_model: str, pid: int, code: int) -> None:
    log.info("prebake_backend_exited", pid=pid, code=code)


DEFAULT_EVICTION = "discard+checkpoint"


def check_request(config: Config, alias: str, eviction_text: str | None) -> EvictionConfig:
    """The eviction to pre-bake `alias` with; ValueError says why the request is unusable."""
    if alias not in config.models:
        raise ValueError(f"--checkpoint {alias}: no such model (known: {', '.join(config.models)})")
    if config.checkpoint is None:
        raise ValueError("--checkpoint needs a top-level `checkpoint` section in the config")
    try:
        eviction = EvictionConfig.parse(eviction_text or DEFAULT_EVICTION)
    except ValueError as exc:
        raise ValueError(f"--eviction: {exc}") from None
    if eviction.process is not ProcessStrategy.CHECKPOINT:
        raise ValueError(f"--eviction {eviction}: a pre-baked image needs process `checkpoint`")
    return eviction


def run_prebake(config: Config, alias: str, eviction: EvictionConfig) -> Prebaked:
    state_dir = resolve_state_dir(config)  # the daemon's own (see the module docstring)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return asyncio.run(prebake(config, alias, eviction, state_dir))


def summary(alias: str, result: Prebaked) -> str:
    """What `--checkpoint` prints: where the image is and how to use it."""
    manifest = result.image.manifest
    lines = [
        f"pre-baked {alias} ({manifest.eviction}) in {result.secs:.1f}s",
        f"image: {result.image.path} ({manifest.total_bytes / (1 << 20):.1f} MiB, "
        f"{len(manifest.files)} files)",
    ]
    if result.url:
        lines.append(f"uploaded: {result.url}")
    lines.append(f'config: "models": {{"{alias}": {{"checkpoint_path": "{result.image.path}"}}}}')
    return os.linesep.join(lines)
