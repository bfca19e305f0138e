"""Whether this node could serve each model now: the fleet's question, asked of placement.

Owns: `judge`, the pure answer per model — the learned seconds to bring it to READY, why
it cannot be served now without evicting a pinned or busy model (`blocked`), and why a
request sent now would not even wait for it (`refused`) — computed from the slots when
the view is published. "" means it can.
Does not: change anything or decide a switch (the policy and placement do). It asks
placement the scheduler's own question with two differences: every busy model (in-flight
or queued requests) counts as pinned, so the answer is "without evicting a pinned or busy
model", and `min_active_secs` is ignored (it only delays a victim by seconds).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from gpumux.core.placement import Tenant, admit
from gpumux.core.states import ModelState
from gpumux.policy.costs import SwitchCosts
from gpumux.scheduler.state.models import Models
from gpumux.scheduler.state.slots import Slot

M = ModelState
#: Coming up: a request sent now is served by this bring-up, not by a new one.
COMING_UP = frozenset({M.STARTING, M.WAKING})
#: States whose way back to READY is a cold start (learned as `cold_start`).
COLD_STATES = frozenset({M.STOPPED, M.STOPPING, M.FAILED, M.STARTING})


@dataclass(frozen=True, slots=True)
class Hosting:
    wake_cost_secs: float  # learned seconds from this state to ready (0 when ready)
    blocked: str  # why it cannot be served now without evicting a pinned or busy model
    refused: str  # why a request sent now would not even wait for it


def judge(
    models: Models, costs: SwitchCosts, *, shutting_down: bool, now: float
) -> dict[str, Hosting]:
    """Every model's `Hosting` at `now`."""
    wake = {alias: wake_cost(costs, slot) for alias, slot in models.slots.items()}
    tenants = {
        alias: _as_placement_sees_it(slot, wake[alias], models.protected(alias))
        for alias, slot in models.slots.items()
    }
    return {
        alias: Hosting(wake[alias], *_judge(slot, models, tenants, shutting_down, now))
        for alias, slot in models.slots.items()
    }


def wake_cost(costs: SwitchCosts, slot: Slot) -> float:
    if slot.state is M.READY:
        return 0.0
    op = "cold_start" if slot.state in COLD_STATES else "wake"
    return costs.op_cost(slot.alias, op, str(slot.eviction))


def _as_placement_sees_it(slot: Slot, wake_cost_secs: float, protected: bool) -> Tenant:
    # A busy model is never a victim here: bringing another model up must not cost it.
    pinned = protected or not slot.idle
    return dataclasses.replace(
        slot.tenant(min_active_secs=0.0, wake_cost_secs=wake_cost_secs), pinned=pinned
    )


def _judge(
    slot: Slot, models: Models, tenants: Mapping[str, Tenant], shutting_down: bool, now: float
) -> tuple[str, str]:
    never = ""
    if shutting_down:
        never = "the node is shutting down"
    elif len(slot.queue) >= slot.config.max_queue:
        never = "its queue is full"
    elif slot.state is M.READY or slot.state in COMING_UP:
        return "", ""
    elif models.pinned is not None and models.pinned != slot.alias:
        never = f"manual mode: only `{models.pinned}` is woken"
    elif slot.state is M.FAILED and (slot.retry_not_before is None or now < slot.retry_not_before):
        never = f"failed: {slot.last_error}" if slot.last_error else "failed"
    if never:
        return never, never
    admission = admit(slot.alias, tenants, models.capacity, now)
    if admission.fits_now or admission.victims:
        return "", ""
    if admission.impossible:
        return admission.impossible, admission.impossible
    # Busy models hold the memory: a request waits until the policy drains one of them.
    return admission.reason, ""
