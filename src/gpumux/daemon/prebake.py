"""Pre-baked CRIU images: `gpumux serve CONFIG --checkpoint MODEL`, and using them at start.

Owns: the one-shot pre-bake (start MODEL, warm it with a 1-token request, evict it with
a `*+checkpoint` eviction, wait for the image and its upload, print where it is), the
construction of `Checkpoints` from a config, and the initial state of models whose
`checkpoint_path` names a usable image (CHECKPOINTED, restored on first request).
Does not: serve the proxy or run the scheduler; the pre-bake drives `Backends` directly
through the same steps a switch uses.

The pre-bake shares the daemon's state directory, because the image keeps the backend's
log file open by path and a restore reopens exactly that path. It does not sweep the
daemon's children (it keeps its own registry under `<state_dir>/prebake`) and refuses to
start when the model's port is taken (a daemon already serving it).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import structlog

from gpumux.backends.effects import Backends
from gpumux.backends.upstream import UpstreamPools
from gpumux.checkpoint.catalog import OpObserver
from gpumux.checkpoint.checkpoints import Checkpoints, FailureObserver
from gpumux.checkpoint.criu_inventory import port_is_free
from gpumux.checkpoint.identity import ModelIdentity
from gpumux.checkpoint.images import Image
from gpumux.checkpoint.s3.auth import check_manifest_key
from gpumux.core.config import GIB, Config, EvictionConfig, ProcessStrategy, WeightStrategy
from gpumux.core.errors import StepFailed
from gpumux.core.eviction import Step, evict_plan
from gpumux.core.states import ModelState
from gpumux.gpu.fake_ledger import create_ledger
from gpumux.procs import ChildRegistry, Reaper, set_child_subreaper, sweep_leftovers

log = structlog.get_logger(__name__)

InitialStates = dict[str, tuple[ModelState, WeightStrategy | None]]


class PrebakeFailed(Exception):
    pass


@dataclass(frozen=True)
class Prebaked:
    image: Image
    secs: float
    url: str | None  # where it was uploaded, if an object store is configured


def make_checkpoints(
    config: Config,
    log_dir: Path,
    observe: OpObserver | None = None,
    on_restore_failure: FailureObserver | None = None,
) -> Checkpoints | None:
    if config.checkpoint is None:
        return None
    return Checkpoints(
        config.checkpoint,
        log_dir=log_dir,
        observe=observe,
        on_restore_failure=on_restore_failure,
    )


async def initial_states(config: Config, checkpoints: Checkpoints | None) -> InitialStates:
    """CHECKPOINTED (with the image's weights) for each model whose pre-baked image exists."""
    states: InitialStates = {}
    if checkpoints is None:
        return states
    # Nothing runs yet, so every staging directory is litter of an interrupted run.
    beside = [Path(m.checkpoint_path) for m in config.models.values() if m.checkpoint_path]
    await checkpoints.catalog.sweep_staging([*beside, *(p.parent for p in beside)])
    for alias, model in config.models.items():
        if model.checkpoint_path is None:
            continue
        identity = ModelIdentity.of(config, alias)
        weights = await checkpoints.adopt_prebaked(alias, Path(model.checkpoint_path), identity)
        if weights is not None:
            states[alias] = (ModelState.CHECKPOINTED, weights)
            log.info("model_prebaked", model=alias, path=model.checkpoint_path)
    return states


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
    sweep_leftovers(own_dir)
    set_child_subreaper()
    loop = asyncio.get_running_loop()
    reaper = Reaper()
    reaper.install(loop)
    checkpoints = make_checkpoints(config, state_dir / "logs")
    if checkpoints is None:
        raise PrebakeFailed("pre-baking needs a top-level `checkpoint` section")
    checkpoints.prebake = True
    pools = UpstreamPools()
    session = aiohttp.ClientSession()
    backends = Backends(
        config,
        session=session,
        reaper=reaper,
        registry=ChildRegistry(own_dir),
        log_dir=state_dir / "logs",
        ledger_path=_ledger(config, state_dir),
        on_exit=lambda _model, pid, code: log.info("prebake_backend_exited", pid=pid, code=code),
        pools=pools,
        checkpoints=checkpoints,
    )
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
    finally:
        await backends.close()
        await pools.close()
        await session.close()
        reaper.uninstall()


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
    from gpumux.daemon.daemon import resolve_state_dir  # the daemon's own state directory

    state_dir = resolve_state_dir(config)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return asyncio.run(prebake(config, alias, eviction, state_dir))


def _ledger(config: Config, state_dir: Path) -> Path | None:
    gpu = config.gpu
    if gpu.probe != "fake":
        return None
    path = (
        Path(gpu.fake_ledger_path) if gpu.fake_ledger_path else state_dir / "fake-gpu-ledger.json"
    )
    if not path.exists():  # a running daemon's ledger is shared, never reset
        create_ledger(path, [int(gib * GIB) for gib in gpu.fake_capacity_gib])
    return path


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
