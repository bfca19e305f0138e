"""Turns the core's mutable parts into the frozen `SchedulerView` edges read.

Owns: the copy — every field of the view is taken from the parts at one moment (between
two inputs) into immutable values, so nothing outside the owner task holds a reference
into the core's records.
Does not: decide, or keep anything between calls. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from gpumux.policy.costs import SwitchCosts
from gpumux.scheduler.state.host_budget import HostBudget
from gpumux.scheduler.state.hosting import Hosting, judge
from gpumux.scheduler.state.idle import Idle
from gpumux.scheduler.state.models import Models
from gpumux.scheduler.state.slots import Slot
from gpumux.scheduler.state.switches import SwitchBook
from gpumux.scheduler.view import HostBudgetStatus, ModelStatus, SchedulerView, SwitchStatus


def publish(
    models: Models,
    host: HostBudget,
    switches: SwitchBook,
    costs: SwitchCosts,
    idle: Idle,
    *,
    preload: Mapping[str, str],
    shutting_down: bool,
    now: float,
) -> SchedulerView:
    hosting = judge(models, costs, shutting_down=shutting_down, now=now)
    return SchedulerView(
        models=MappingProxyType(
            {
                alias: _model(slot, models, host, idle, hosting[alias])
                for alias, slot in models.slots.items()
            }
        ),
        switches=tuple(
            SwitchStatus(s.switch_id, s.target, tuple(s.victims), s.started_at, tuple(s.phases))
            for s in switches.active.values()
        ),
        mode=models.mode,
        pinned=models.pinned,
        shutting_down=shutting_down,
        all_stopped=models.all_stopped,
        costs=MappingProxyType(
            {name: MappingProxyType(table) for name, table in costs.to_dict().items()}
        ),
        host=HostBudgetStatus(host.reserve_bytes, host.available),
        held=tuple(sorted(models.held)),
        preload=MappingProxyType(dict(preload)),
    )


def _model(
    slot: Slot, models: Models, host: HostBudget, idle: Idle, hosting: Hosting
) -> ModelStatus:
    return ModelStatus(
        alias=slot.alias,
        state=slot.state,
        pid=slot.pid,
        port=slot.config.port,
        queue_depth=len(slot.queue),
        inflight=len(slot.leases),
        operation=slot.op.kind if slot.op is not None else None,
        switch_id=slot.switch_id,
        pinned=models.protected(slot.alias),
        ready_since=slot.ready_since,
        restarts=slot.restarts,
        start_failures=slot.start_failures,
        retry_not_before=slot.retry_not_before,
        last_error=slot.last_error,
        eviction=str(slot.eviction),
        gpus=tuple(slot.config.gpu_indices),
        gpu_memory_utilization=slot.config.gpu_memory_utilization,
        host_pin_bytes=host.pin_estimate(slot),
        idle_step_at=idle.next_step_at(slot.alias),
        max_concurrency=slot.config.max_concurrency or slot.config.max_num_seqs,
        wake_cost_secs=hosting.wake_cost_secs,
        blocked=hosting.blocked,
        refused=hosting.refused,
        host_pinned_bytes=host.held_bytes(slot),
        level1_backup=slot.l1_backup,
    )
