"""The policies by `policy_type` name (the config's contract), and building one.

Owns: `POLICIES` and `make_policy`.
Does not: define the interface (`base` does; every policy imports it, so the registry
sits above both and nothing below imports it). Pure.
"""

from __future__ import annotations

from gpumux.core.config import PolicyConfig
from gpumux.policy.base import Policy, PolicyFactory
from gpumux.policy.cost_aware import CostAwarePolicy
from gpumux.policy.fifo import FifoPolicy
from gpumux.policy.time_slice import TimeSlicePolicy

POLICIES: dict[str, PolicyFactory] = {
    "fifo": FifoPolicy,
    "cost_aware": CostAwarePolicy,
    "time_slice": TimeSlicePolicy,
}


def make_policy(config: PolicyConfig) -> Policy:
    return POLICIES[config.policy_type](config)
