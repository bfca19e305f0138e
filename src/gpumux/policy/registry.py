"""The policies by `policy_type` name (the config's contract)."""

from __future__ import annotations

from gpumux.policy.base import PolicyFactory
from gpumux.policy.cost_aware import CostAwarePolicy
from gpumux.policy.fifo import FifoPolicy
from gpumux.policy.time_slice import TimeSlicePolicy

POLICIES: dict[str, PolicyFactory] = {
    "fifo": FifoPolicy,
    "cost_aware": CostAwarePolicy,
    "time_slice": TimeSlicePolicy,
}
