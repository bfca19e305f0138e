"""The process's life: vLLM's startup sequence, late listen, signals, graceful stop.

Owns: the order of startup (log lines, bind, workers, ledger, host memory, "loading",
listen), the engine-death watchdog, and shutdown (stop listening, abort in-flight,
stop workers, release the ledger).
Does not: serve routes (``app``) or hold engine state (``engine``).

Like vLLM, the port is bound early (a conflict fails fast) but only listened on once
"loading" is over, so connections during startup are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket

from aiohttp import web

from mock_vllm.app import VERSION, build_app, dev_mode_enabled, route_lines
from mock_vllm.device import Device, DeviceUnavailable, open_device, require_torch_cuda
from mock_vllm.engine import Engine
from mock_vllm.gpu_memory import GpuMemory, GpuMemoryError, visible_gpus
from mock_vllm.options import GIB, ServeOptions
from mock_vllm.vlog import log
from mock_vllm.workers import Workers

WATCH_SECS = 0.2
#: How often the ledger is checked for a rank that cuda-checkpoint suspended; cheap (a
#: stat) unless the file changed, and re-read regardless every CUDA_REREAD_POLLS polls.
CUDA_WATCH_SECS = 0.02
CUDA_REREAD_POLLS = 25
# vLLM's API server exits a few seconds after its engine core dies; keep it short here.
ENGINE_DEATH_EXIT_SECS = 1.0
HANDLER_SHUTDOWN_SECS = 1.0
PAGE = 4096


def bind(host: str, port: int) -> socket.socket:
    """Bind without listening: the port is ours, connections are still refused."""
    family, kind, proto, _name, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def touch_host_memory(gib: float) -> bytearray:
    """Allocate ``gib`` GiB and write one byte per page so the RSS is real."""
    size = int(gib * GIB)
    buf = bytearray(size)
    buf[::PAGE] = b"\x01" * len(range(0, size, PAGE))
    return buf


async def _watch(workers: Workers, engine: Engine, stop: asyncio.Event, code: list[int]) -> None:
    while not stop.is_set():
        await asyncio.sleep(WATCH_SECS)
        dead = workers.first_dead()
        if dead is None or stop.is_set():
            continue
        log(
            f"Engine core proc (pid {dead}) died unexpectedly, shutting down.",
            level="ERROR",
            where="core_client.py:1",
        )
        engine.mark_dead()
        await asyncio.sleep(ENGINE_DEATH_EXIT_SECS)
        # A SIGTERM to the whole group also kills workers; that is a clean stop.
        if not stop.is_set():
            code[0] = 1
            stop.set()


async def _watch_cuda(gpu: GpuMemory, engine: Engine) -> None:
    """Keep ``engine.cuda_running`` in step with the ranks' cuda-checkpoint state."""
    seen: tuple[int, int] | None = None
    polls = 0
    while True:
        stamp = gpu.ledger_stamp()
        polls += 1
        if stamp is not None and (stamp != seen or polls >= CUDA_REREAD_POLLS):
            seen, polls = stamp, 0
            engine.set_cuda_running(gpu.cuda_running())
        await asyncio.sleep(CUDA_WATCH_SECS)


async def serve(opts: ServeOptions) -> int:
    """Run ``vllm serve`` until a signal or engine death; returns the exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        log(f"Received {sig.name}, shutting down.", where="launcher.py:1")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    log(f"vLLM server version {VERSION}, serving model {opts.model}", where="utils.py:1")
    log(f"non-default args: {opts.non_default_args}", where="utils.py:1")
    if opts.unknown_args:
        log(f"Ignoring unrecognised vLLM arguments: {opts.unknown_args}", level="WARNING")
    if dev_mode_enabled():
        log(
            "SECURITY WARNING: Development endpoints are enabled! "
            "This should NOT be used in production!",
            level="WARNING",
        )
    if opts.faults.exit_at_start:
        log(
            "RuntimeError: Engine core initialization failed (mock fault exit_at_start).",
            level="ERROR",
            stream="stderr",
        )
        return 1
    try:
        if opts.gpu == "torch":
            require_torch_cuda()  # before the port is taken: never a silent fallback
        sock = bind(opts.host, opts.port)
        gpus = visible_gpus(opts.tensor_parallel_size)
    except (OSError, GpuMemoryError, DeviceUnavailable) as exc:
        log(f"{type(exc).__name__}: {exc}", level="ERROR", stream="stderr")
        return 1
    with contextlib.closing(sock):
        return await _run(opts, sock, gpus, stop)


async def _run(
    opts: ServeOptions, sock: socket.socket, gpus: list[int], stop: asyncio.Event
) -> int:
    workers = Workers(opts.tensor_parallel_size)
    workers.spawn()
    gpu = GpuMemory(
        model=opts.model_id,
        pids=workers.pids,
        gpus=gpus,
        utilization=opts.gpu_memory_utilization,
        model_bytes=opts.model_bytes,
        residual_bytes=int(opts.residual_gib * GIB),
    )
    device: Device | None = None
    try:
        gpu.book_startup()
        device = await open_device(opts)
    except (GpuMemoryError, DeviceUnavailable) as exc:
        log(str(exc), level="ERROR", where="gpu_worker.py:1", stream="stderr")
        gpu.release()
        workers.kill_now()
        return 1
    engine = Engine(opts, gpu, crash=workers.crash_tree, device=device)
    runner: web.AppRunner | None = None
    site: web.SockSite | None = None
    code = [0]
    try:
        ballast = touch_host_memory(opts.host_memory_gib) if opts.host_memory_gib > 0 else None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=opts.startup_delay)
        if stop.is_set():
            return 0
        half = opts.startup_delay / 2
        log(
            f"Loading weights took {half:.2f} seconds",
            where="default_loader.py:1",
            proc="EngineCore_DP0",
            pid=workers.pids[0],
        )
        log(
            f"Model loading took {opts.model_gib:.4f} GiB memory and {half:.6f} seconds",
            where="gpu_model_runner.py:1",
            proc="EngineCore_DP0",
            pid=workers.pids[0],
        )
        app = build_app(engine, opts)
        runner = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log=None,
            keepalive_timeout=opts.faults.keepalive_timeout_secs,
            shutdown_timeout=HANDLER_SHUTDOWN_SECS,
        )
        await runner.setup()
        log(f"Starting vLLM server on http://{opts.host}:{opts.port}")
        for line in route_lines(app):
            log(line, where="launcher.py:1")
        site = web.SockSite(runner, sock)
        await site.start()
        log("Application startup complete.", where="on.py:1")
        watchdog = asyncio.create_task(_watch(workers, engine, stop, code))
        cuda_watch = asyncio.create_task(_watch_cuda(gpu, engine)) if gpu.path else None
        await stop.wait()
        for task in (watchdog, cuda_watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        del ballast
    finally:
        # Stop listening first, then abort what is in flight (vLLM's default
        # --shutdown-timeout 0), then wait briefly for handlers to write their endings.
        if site is not None:
            await site.stop()
        engine.begin_shutdown()
        if runner is not None:
            await runner.cleanup()
        await workers.stop()
        gpu.release()
        if device is not None:
            await device.close()
    return code[0]
