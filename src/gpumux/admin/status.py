"""The admin status snapshot (`GET /api/status`): one JSON document an operator reads.

Owns: assembling, from read-only views, per-model state (queue depth, in-flight, last
switch with strategy, duration and phases, restarts, last error, pid, image location),
the mode and pinned model, switches in progress, learned switch costs, GPU and host
memory, and request/TTFT counters the dashboard turns into rates.
Does not: change anything. It reads the scheduler's frozen view (published after each
step, so it is always one consistent state), never the core, and never reads a value to
act on it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gpumux.core.config import Config
from gpumux.scheduler.view import ModelStatus, SchedulerView
from gpumux.telemetry.metrics import Metrics
from gpumux.telemetry.observer import DaemonObserver
from gpumux.telemetry.resources import Resources


async def _nothing_to_settle() -> None:
    return None


@dataclass(frozen=True)
class StatusSources:
    """Everything the status page reads; each part is owned elsewhere."""

    config: Callable[[], Config]
    view: Callable[[], SchedulerView]
    observer: DaemonObserver
    metrics: Metrics
    resources: Resources
    pid_of: Callable[[str], int | None]
    clock: Callable[[], float]  # the scheduler's clock (loop time), for ages
    daemon_state: Callable[[], str]
    proxy_url: str
    #: The image catalog's view (images per model, S3 transfers); {} without checkpoints.
    images: Callable[[], Mapping[str, Any]] = dict
    #: Brings `view` up to date with what requests did without asking the scheduler
    #: (`Scheduler.settle`); awaited before a status is built.
    settle: Callable[[], Awaitable[None]] = _nothing_to_settle


def build_status(src: StatusSources) -> dict[str, object]:
    now = src.clock()
    view = src.view()
    config = src.config()
    requests, ttft = _request_counters(src.metrics)
    images = src.images()
    image_models = images.get("models", {})
    models = {
        alias: _model_status(model, config, src, now, requests, ttft)
        | {"image": _image(config, alias, image_models.get(alias))}
        for alias, model in view.models.items()
    }
    switching = [
        {
            "switch_id": s.switch_id,
            "target": s.target,
            "victims": list(s.victims),
            "age_s": round(now - s.started_at, 3),
            "phases": dict(s.phases),
            "target_state": (
                view.models[s.target].state.value if s.target in view.models else None
            ),
        }
        for s in view.switches
    ]
    return {
        "daemon": {"state": src.daemon_state(), "time": time.time()},
        "proxy_url": src.proxy_url,
        "mode": view.mode.value,
        "pinned": view.pinned,
        "pins": list(view.held),
        "preload": dict(view.preload),
        "policy": config.policy.policy_type,
        "models": models,
        "switches_in_progress": switching,
        "costs": {name: dict(table) for name, table in view.costs.items()},
        "resources": src.resources.to_dict(),
        "host_budget": {
            "reserve_bytes": view.host.reserve_bytes,
            # What each model pins in host RAM while asleep at level 1 or suspended.
            "pin_estimate_bytes": {a: m.host_pin_bytes for a, m in view.models.items()},
            # What each model pins now; a process that slept at level 1 keeps its pinned
            # backup while awake too (vLLM frees it only when the process ends).
            "pinned_now_bytes": {a: m.host_pinned_bytes for a, m in view.models.items()},
            "level1_backup": [a for a, m in view.models.items() if m.level1_backup],
        },
        "transfers": images.get("transfers", {}),
    }


def _model_status(
    model: ModelStatus,
    config: Config,
    src: StatusSources,
    now: float,
    requests: dict[str, float],
    ttft: dict[str, tuple[float, float]],
) -> dict[str, object]:
    alias = model.alias
    entry = config.models.get(alias)
    ttft_sum, ttft_count = ttft.get(alias, (0.0, 0.0))
    ready_since, retry_at = model.ready_since, model.retry_not_before
    return {
        "state": model.state.value,
        "queue_depth": model.queue_depth,
        "inflight": model.inflight,
        "operation": model.operation.value if model.operation is not None else None,
        "switch_id": model.switch_id,
        "pinned": model.pinned,
        "aliases": list(entry.aliases) if entry is not None else [],
        "max_concurrency": entry.max_concurrency if entry is not None else None,
        "priority": entry.priority if entry is not None else 0,
        "idle": _idle(config, alias, model, now),
        "pid": src.pid_of(alias) if alias in config.models else model.pid,
        "ready_for_s": round(now - ready_since, 3) if ready_since is not None else None,
        "restarts": model.restarts,
        "start_failures": model.start_failures,
        "retry_in_s": round(max(0.0, retry_at - now), 3) if retry_at is not None else None,
        "last_error": model.last_error or None,
        "last_switch": src.observer.last_switch.get(alias),
        "eviction": model.eviction,
        "gpus": list(model.gpus),
        "gpu_memory_utilization": model.gpu_memory_utilization,
        "requests_total": requests.get(alias, 0.0),
        "ttft_seconds_sum": ttft_sum,
        "ttft_seconds_count": ttft_count,
    }


def _idle(config: Config, alias: str, model: ModelStatus, now: float) -> dict[str, object]:
    """The model's idle ladder and when its next step falls due."""
    ladder = config.idle_ladder(alias) if alias in config.models else ()
    at = model.idle_step_at
    return {
        "ladder": [{"after_secs": s.after_secs, "eviction": str(s.eviction)} for s in ladder],
        "next_step_in_s": round(max(0.0, at - now), 3) if at is not None else None,
    }


def _image(config: Config, alias: str, known: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Where the model's image lives: the catalog's current one, else its pre-baked path."""
    if known and (known.get("image") or known.get("remote_version")):
        where = "local" if known.get("image") else "s3"
        return {"location": where, "path": known.get("image"), **known}
    model = config.models.get(alias)
    path = model.checkpoint_path if model is not None else None
    if not path:
        return None
    return {"location": "s3" if path.startswith("s3://") else "local", "path": path}


def _request_counters(
    metrics: Metrics,
) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Requests per model, and TTFT (sum, count) per model, from the live series."""
    requests: dict[str, float] = {}
    for family in metrics.requests.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                model = sample.labels["model"]
                requests[model] = requests.get(model, 0.0) + sample.value
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in metrics.time_to_first_token.collect():
        for sample in family.samples:
            model = sample.labels.get("model", "")
            if sample.name.endswith("_sum"):
                sums[model] = sums.get(model, 0.0) + sample.value
            elif sample.name.endswith("_count"):
                counts[model] = counts.get(model, 0.0) + sample.value
    return requests, {m: (sums.get(m, 0.0), counts.get(m, 0.0)) for m in counts}
