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
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import structlog

from gpumux.config import Config, ModelConfig
from gpumux.eviction import Step
from gpumux.orchestrator import StepFailed
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
from gpumux.vllm_client import BackendControlError, VllmClient

log = structlog.get_logger(__name__)

ExitCallback = Callable[[str, int, int], None]

#: How often readiness is polled while a backend starts.
HEALTH_POLL_SECS = 0.1


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
    config: Config, model: ModelConfig, parent: Mapping[str, str], ledger_path: Path | None
) -> dict[str, str]:
    secrets = [name for name in (config.api_keys_env, config.admin_token_env) if name]
    extra = {
        "VLLM_SERVER_DEV_MODE": "1",  # the sleep/wake routes exist only in dev mode
        "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in model.gpu_indices),
        # vLLM closes idle keep-alive connections after 5 s; our pool recycles at 4 s.
        "VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "10",
    }
    if ledger_path is not None:
        extra["MOCK_VLLM_LEDGER"] = str(ledger_path)
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
    ) -> None:
        self._config = config
        self._sup = config.supervision
        self._reaper = reaper
        self._registry = registry
        self._ledger_path = ledger_path
        self._on_exit = on_exit
        self._backends = {
            alias: _Backend(
                alias,
                VllmClient(session, f"http://127.0.0.1:{model.port}"),
                log_dir / f"{alias}.log",
            )
            for alias, model in config.models.items()
        }

    # ---- Effects --------------------------------------------------------------------

    def pid_of(self, model: str) -> int | None:
        process = self._backends[model].process
        return process.pid if process is not None and not process.exited.done() else None

    async def kill(self, model: str) -> None:
        backend = self._backends[model]
        process, backend.process = backend.process, None
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
                case Step.CUDA_SUSPEND | Step.CUDA_RESUME | Step.CRIU_DUMP | Step.CRIU_RESTORE:
                    raise StepFailed(model, step, "this build has no cuda-checkpoint/CRIU support")
        except BackendControlError as exc:
            raise StepFailed(model, step, str(exc)) from exc
        if step is not Step.STOP and step is not Step.COLD_START and self.pid_of(model) is None:
            raise StepFailed(model, step, "the backend process is gone")

    # ---- processes ------------------------------------------------------------------

    async def _cold_start(self, backend: _Backend) -> None:
        alias = backend.alias
        model = self._config.models[alias]
        await self.kill(alias)  # never two trees for one model (stale port, leaked memory)
        env = backend_env(self._config, model, os.environ, self._ledger_path)
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
        backend.process = process
        self._registry.add(process)
        process.exited.add_done_callback(
            lambda fut: (
                self._on_exit(alias, process.pid, fut.result()) if not fut.cancelled() else None
            )
        )
        backend.tail = LogTail(backend.log_path, model=alias, pid=process.pid, start_offset=offset)
        backend.tail_task = asyncio.get_running_loop().create_task(backend.tail.run())
        await self._wait_healthy(backend, process, model.startup_timeout_secs)

    async def _wait_healthy(
        self, backend: _Backend, process: BackendProcess, deadline_secs: float
    ) -> None:
        """Readiness is `/health` answering 200, bounded by `startup_timeout_secs`."""
        try:
            async with asyncio.timeout(deadline_secs):
                while True:
                    if process.exited.done():
                        code = process.exited.result()
                        tail = " | ".join(self.recent_output(backend.alias)[-3:])
                        raise StepFailed(
                            backend.alias,
                            Step.COLD_START,
                            f"exited with code {code} during start: {tail}",
                        )
                    if await backend.client.health(timeout=self._sup.health_timeout_secs):
                        return
                    await asyncio.sleep(HEALTH_POLL_SECS)
        except TimeoutError:
            raise StepFailed(
                backend.alias,
                Step.COLD_START,
                f"not healthy within startup_timeout_secs={deadline_secs:g}",
            ) from None

    async def _stop_tail(self, backend: _Backend) -> None:
        task, backend.tail_task = backend.tail_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def client(self, model: str) -> VllmClient:
        return self._backends[model].client

    def recent_output(self, model: str) -> list[str]:
        tail = self._backends[model].tail
        return tail.recent_lines() if tail is not None else []

    async def close(self) -> None:
        """Kill every tree (shutdown's last resort after the scheduler's orderly stops)."""
        await asyncio.gather(
            *(self.kill(alias) for alias in self._backends), return_exceptions=True
        )
