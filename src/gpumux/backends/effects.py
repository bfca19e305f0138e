"""The real `Effects`: each model's backend process and the vLLM calls that move it.

Owns: the live `BackendProcess` of each model, its control client and log tail, the
argv and environment a backend is started with, and how each eviction step is carried
out against a real (or mock) `vllm serve`.
Does not: decide which step runs when (the orchestrator and scheduler do). Every
operation on one model is serialised by the scheduler (at most one per model at a time),
so the per-model records here have a single writer.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import structlog

from gpumux.backends.readiness import wait_healthy
from gpumux.backends.upstream import UpstreamPools
from gpumux.backends.vllm_client import BackendControlError, VllmClient
from gpumux.checkpoint.checkpoints import CheckpointFailed, Checkpoints
from gpumux.checkpoint.identity import ModelIdentity
from gpumux.checkpoint.timeline import RestoreTimeline
from gpumux.core.config import LORA_FLAG, Config, ModelConfig, ProcessStrategy, WeightStrategy
from gpumux.core.errors import StepFailed
from gpumux.core.eviction import WEIGHTS_AFTER, Step
from gpumux.cuda.suspend import CudaSuspender, CudaSuspendFailed, nccl_safe_env, suspender_for
from gpumux.procs import (
    BackendProcess,
    ChildRegistry,
    LogTail,
    Reaper,
    SpawnFailed,
    child_environment,
    kill_tree,
    spawn_backend,
)

log = structlog.get_logger(__name__)

ExitCallback = Callable[[str, int, int], None]


def resolve_program(name: str) -> str:
    """A bare program name from PATH, else from the interpreter's own bin directory.

    gpumux installed in a venv but started by its full path (systemd, scripts) still
    finds the `mock-vllm` or `vllm` installed beside it.
    """
    if os.sep in name or shutil.which(name):
        return name
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def backend_argv(config: Config, alias: str) -> list[str]:
    """`vllm serve MODEL ...` with the flags gpumux always owns (design §1)."""
    model = config.models[alias]
    program, *rest = config.vllm_argv
    argv = [resolve_program(program), *rest, "serve", model.model_path, *model.extra_args]
    argv += ["--host", "127.0.0.1", "--port", str(model.port), "--served-model-name", alias]
    if model.enable_sleep_mode:
        argv.append("--enable-sleep-mode")
    return argv


def backend_env(
    config: Config,
    model: ModelConfig,
    parent: Mapping[str, str],
    ledger_path: Path | None,
    *,
    alias: str | None = None,
) -> dict[str, str]:
    secrets = config.secret_env_names  # API keys, admin token, image signing key
    extra = {
        "VLLM_SERVER_DEV_MODE": "1",  # the sleep/wake routes exist only in dev mode
        "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in model.gpu_indices),
        # vLLM closes idle keep-alive connections after 5 s; our pool recycles at 4 s.
        "VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "10",
    }
    if ledger_path is not None:
        extra["MOCK_VLLM_LEDGER"] = str(ledger_path)
    if model.has_flag(LORA_FLAG):
        # For vLLM's runtime adapter API; on the flag, so adding `adapters` restarts nothing.
        extra["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    if alias is not None:
        extra.update(nccl_safe_env(config, alias))
    return child_environment(parent, model_env=model.env, secret_names=secrets, extra=extra)


@dataclass
class _Backend:
    alias: str
    client: VllmClient
    log_path: Path
    process: BackendProcess | None = None
    tail_task: asyncio.Task[None] | None = None
    tail: LogTail | None = None
    recent: list[str] = field(default_factory=list)
    cuda_pids: list[int] = field(default_factory=list)  # what cuda_suspend moved to host
    #: How the live process's weights were last put to sleep (RETAIN: awake).
    weights: WeightStrategy = WeightStrategy.RETAIN
    #: Set while a CRIU dump runs: nothing may open a connection into the tree.
    quiesced: bool = False
    weight_resets: int = 0  # cold starts + level-2 sleeps: LoRA adapters loaded are gone


class Backends:
    """Implements `orchestrator.Effects` for real processes."""

    def __init__(
        self,
        config: Config,
        *,
        session: aiohttp.ClientSession,
        reaper: Reaper,
        registry: ChildRegistry,
        log_dir: Path,
        ledger_path: Path | None,
        on_exit: ExitCallback,
        pools: UpstreamPools | None = None,
        checkpoints: Checkpoints | None = None,
    ) -> None:
        """`pools` gives each backend its own connections (needed for CRIU dumps);
        without it control calls share `session`."""
        self._config = config
        self._sup = config.supervision
        self._reaper = reaper
        self._registry = registry
        self._ledger_path = ledger_path
        self._on_exit = on_exit
        self._session = session
        self._log_dir = log_dir
        self._cuda: CudaSuspender | None = None
        self._pools = pools
        self.checkpoints = checkpoints
        self._backends = {
            alias: _Backend(alias, self._client_for(alias, model.port), log_dir / f"{alias}.log")
            for alias, model in config.models.items()
        }

    def _client_for(self, alias: str, port: int) -> VllmClient:
        session = self._pools.session(alias) if self._pools is not None else self._session
        return VllmClient(session, f"http://127.0.0.1:{port}")

    # ---- Effects --------------------------------------------------------------------

    def pid_of(self, model: str) -> int | None:
        process = self._backends[model].process
        return process.pid if process is not None and not process.exited.done() else None

    async def kill(self, model: str) -> None:
        backend = self._backends[model]
        process, backend.process = backend.process, None
        backend.cuda_pids = []
        if process is None:
            return
        await kill_tree(process, grace_secs=self._sup.stop_grace_secs)
        self._registry.remove(process.pid)
        await self._stop_tail(backend)

    async def run_step(self, model: str, step: Step, *, abort_inflight: bool) -> None:
        backend = self._backends[model]
        client = backend.client
        sup = self._sup
        mode = "abort" if abort_inflight else "wait"
        try:
            match step:
                case Step.COLD_START:
                    await self._cold_start(backend)
                case Step.STOP:
                    await self.kill(model)
                case Step.SLEEP_OFFLOAD:
                    await client.sleep(1, mode=mode, timeout=sup.sleep_timeout_secs)
                case Step.SLEEP_DISCARD:
                    await client.sleep(2, mode=mode, timeout=sup.sleep_timeout_secs)
                case Step.WAKE_ALL:
                    await client.wake_up(None, timeout=sup.wake_timeout_secs)
                case Step.WAKE_WEIGHTS:
                    await client.wake_up(["weights"], timeout=sup.wake_timeout_secs)
                case Step.RELOAD_WEIGHTS:
                    await client.collective_rpc("reload_weights", timeout=sup.wake_timeout_secs)
                case Step.WAKE_KV_CACHE:
                    await client.wake_up(["kv_cache"], timeout=sup.wake_timeout_secs)
                case Step.RESET_PREFIX_CACHE:
                    await client.reset_prefix_cache(timeout=sup.wake_timeout_secs)
                case Step.WARMUP:
                    await client.warmup(model, timeout=sup.warmup_timeout_secs)
                case Step.CUDA_SUSPEND | Step.CUDA_RESUME:
                    await self._cuda_step(backend, step)
                case Step.CRIU_DUMP:
                    await self._criu_dump(backend)
                case Step.CRIU_RESTORE:
                    await self._criu_restore(backend)
        except BackendControlError as exc:
            raise StepFailed(model, step, str(exc)) from exc
        backend.weights = WEIGHTS_AFTER.get(step, backend.weights)
        if step in (Step.COLD_START, Step.SLEEP_DISCARD):
            backend.weight_resets += 1
        gone_is_ok = (Step.STOP, Step.COLD_START, Step.CRIU_DUMP)
        if step not in gone_is_ok and self.pid_of(model) is None:
            raise StepFailed(model, step, "the backend process is gone")

    # ---- CRIU -------------------------------------------------------------------------

    async def _criu_dump(self, backend: _Backend) -> None:
        checkpoints, process = self.checkpoints, backend.process
        model = self._config.models[backend.alias]
        if checkpoints is None or process is None or process.exited.done():
            why = "the backend process is gone" if checkpoints else "CRIU needs `checkpoint`"
            raise StepFailed(backend.alias, Step.CRIU_DUMP, why)
        backend.quiesced = True
        try:
            # An established connection into the tree fails the dump: drop our pool.
            if self._pools is not None:
                await self._pools.drop(backend.alias)
                backend.client = self._client_for(backend.alias, model.port)
            eviction = f"{backend.weights}+{ProcessStrategy.CHECKPOINT}"
            identity = ModelIdentity.of(self._config, backend.alias)
            await checkpoints.evict(backend.alias, process, eviction=eviction, identity=identity)
        except CheckpointFailed as exc:
            raise StepFailed(backend.alias, Step.CRIU_DUMP, exc.detail) from exc
        finally:
            backend.quiesced = False
        backend.process = None
        self._registry.remove(process.pid)
        await self._stop_tail(backend)

    async def _criu_restore(self, backend: _Backend) -> None:
        alias, checkpoints = backend.alias, self.checkpoints
        if checkpoints is None:
            raise StepFailed(alias, Step.CRIU_RESTORE, "CRIU needs a `checkpoint` section")
        timeline = RestoreTimeline()  # logged as `criu_restore_timeline` whatever happens
        await self.kill(alias)  # never two trees for one model
        timeline.mark("kill")
        outcome = "failed"
        try:
            process = await checkpoints.bring_back(
                alias,
                ModelIdentity.of(self._config, alias),
                log_path=backend.log_path,
                reaper=self._reaper,
                timeline=timeline,
            )
            self._attach(backend, process, process.log_offset)
            timeline.mark("attach")
            outcome = "unhealthy"
            timeout = checkpoints.config.restore_timeout_secs
            await self._wait_healthy(backend, process, timeout, Step.CRIU_RESTORE, timeline)
            outcome = "ok"
        except CheckpointFailed as exc:
            raise StepFailed(alias, Step.CRIU_RESTORE, exc.detail) from exc
        except StepFailed as exc:  # restored, but never healthy
            checkpoints.restore_failed(alias, exc.detail)
            raise
        finally:
            timeline.report(alias, outcome)
        checkpoints.catalog.restored(alias)

    # ---- cuda-checkpoint ----------------------------------------------------------------

    async def _cuda_step(self, backend: _Backend, step: Step) -> None:
        """Suspend or resume every CUDA pid of the tree (design §3 `cuda_suspend`)."""
        checkpoint, process = self._config.checkpoint, backend.process
        if checkpoint is None or process is None:
            raise StepFailed(backend.alias, step, "needs a `checkpoint` section and a live tree")
        if self._cuda is None:  # first use: configs without cuda_suspend start no helper
            cli_path = resolve_program(checkpoint.cuda_checkpoint_path)
            self._cuda = suspender_for(
                checkpoint,
                cli_path=cli_path,
                reaper=self._reaper,
                log_dir=self._log_dir,
                secret_names=self._config.secret_env_names,
            )
        try:
            if step is Step.CUDA_SUSPEND:
                backend.cuda_pids = await self._cuda.suspend(backend.alias, process.pid)
            else:
                await self._cuda.resume(backend.alias, process.pid, backend.cuda_pids)
                backend.cuda_pids = []
        except CudaSuspendFailed as exc:
            raise StepFailed(backend.alias, step, str(exc)) from exc

    # ---- processes ------------------------------------------------------------------

    async def _cold_start(self, backend: _Backend) -> None:
        alias = backend.alias
        model = self._config.models[alias]
        await self.kill(alias)  # never two trees for one model (stale port, leaked memory)
        env = backend_env(self._config, model, os.environ, self._ledger_path, alias=alias)
        # Only this run's output is re-emitted; the file keeps earlier runs for operators.
        offset = backend.log_path.stat().st_size if backend.log_path.exists() else 0
        try:
            process = spawn_backend(
                backend_argv(self._config, alias),
                model=alias,
                env=env,
                log_path=backend.log_path,
                reaper=self._reaper,
            )
        except SpawnFailed as exc:
            raise StepFailed(alias, Step.COLD_START, str(exc)) from exc
        self._attach(backend, process, offset)
        await self._wait_healthy(backend, process, model.startup_timeout_secs, Step.COLD_START)

    def _attach(self, backend: _Backend, process: BackendProcess, offset: int) -> None:
        """Supervise a spawned or restored tree: registry, exit report, log tail."""
        alias = backend.alias
        backend.process = process
        self._registry.add(process)
        process.exited.add_done_callback(
            lambda fut: (
                self._on_exit(alias, process.pid, fut.result()) if not fut.cancelled() else None
            )
        )
        backend.tail = LogTail(backend.log_path, model=alias, pid=process.pid, start_offset=offset)
        # A fresh context: the tail lives as long as the process, not as the op that
        # started it, so it must not carry that op's switch_id/op_id into every line.
        backend.tail_task = asyncio.get_running_loop().create_task(
            backend.tail.run(), context=contextvars.Context()
        )

    async def _wait_healthy(
        self,
        backend: _Backend,
        process: BackendProcess,
        deadline_secs: float,
        step: Step,
        timeline: RestoreTimeline | None = None,
    ) -> None:
        await wait_healthy(
            backend.client,
            process,
            deadline_secs,
            model=backend.alias,
            step=step,
            probe_timeout=self._sup.health_timeout_secs,
            recent_output=lambda: self.recent_output(backend.alias),
            timeline=timeline,
        )

    async def _stop_tail(self, backend: _Backend) -> None:
        task, backend.tail_task = backend.tail_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def client(self, model: str) -> VllmClient:
        return self._backends[model].client

    def weight_resets(self, model: str) -> int:  # the LoRA adapter loader's key
        return self._backends[model].weight_resets

    def recent_output(self, model: str) -> list[str]:
        tail = self._backends[model].tail
        return tail.recent_lines() if tail is not None else []

    def live_ports(self) -> dict[str, int]:
        """Each model whose tree is alive, with the port it was started on."""
        models = self._config.models
        return {
            a: models[a].port
            for a, b in self._backends.items()
            if a in models and self.pid_of(a) and not b.quiesced
        }

    def reload(self, config: Config) -> None:
        """Take a new model table (SIGHUP). New models get a record; a changed one a client
        for its new port (its old tree is stopped by the scheduler through `kill`, which
        needs no config). Records of removed models stay until `close()` so that stop works.
        """
        old = self._config.models
        self._config = config
        for alias, model in config.models.items():
            if alias not in self._backends:
                self._backends[alias] = _Backend(
                    alias, self._client_for(alias, model.port), self._log_dir / f"{alias}.log"
                )
            elif alias in old and old[alias].port != model.port:
                self._backends[alias].client = self._client_for(alias, model.port)

    async def close(self) -> None:
        """Kill every tree (shutdown's last resort after the scheduler's orderly stops)."""
        await asyncio.gather(
            *(self.kill(alias) for alias in self._backends), return_exceptions=True
        )
        if self._cuda is not None:
            await self._cuda.close()  # the driver-API helper, if one was started
        if self.checkpoints is not None:
            await self.checkpoints.close()  # background finalisations and uploads
