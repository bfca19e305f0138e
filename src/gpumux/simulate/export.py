"""A running daemon's learned costs as a cost profile the simulator replays.

Owns: `profile_from_costs`, which turns learned switch costs (`policy.costs.SwitchCosts`:
seconds per model, operation and eviction level, as `/api/status` and the state
directory's `switch_costs.json` hold them) into a `CostProfile`: the measured seconds go
into each model's `seconds` table (`evict`, `wake` and `cold_start`; drain times and
per-pair switch times are not step costs and stay out), and the per-byte rates come from
a base profile (`h200-vm` unless told), which prices what the daemon never measured.
Does not: fetch or read the costs (`cli.costs` does) or simulate. Pure.
"""

from __future__ import annotations

from gpumux.core.config import EvictionConfig
from gpumux.policy.costs import SwitchCosts
from gpumux.simulate.cost_profile import MEASURED_OPS, CostProfile, ModelCosts

#: Decimal places kept of each learned step's seconds.
SECONDS_DIGITS = 4


def profile_from_costs(costs: SwitchCosts, *, base: CostProfile, name: str) -> CostProfile:
    seconds: dict[str, dict[str, float]] = {}
    for key, secs in sorted(costs.ops.items()):
        parts = key.rsplit("|", 2)
        if len(parts) != 3 or parts[1] not in MEASURED_OPS:
            continue
        model, op, strategy = parts
        try:
            EvictionConfig.parse(strategy)
        except ValueError:
            continue  # not a level a profile can name (written by another version)
        # A learned figure is a moving average (0.6557999999998628): a tenth of a
        # millisecond is finer than any step is measured, and the profile is read by people.
        seconds.setdefault(model, {})[f"{op}|{strategy}"] = round(secs, SECONDS_DIGITS)
    models = dict(base.models)
    for model, table in seconds.items():
        known = models.get(model, ModelCosts())
        models[model] = known.model_copy(update={"seconds": {**known.seconds, **table}})
    description = f"Learned switch costs of a gpumux daemon; rates not measured: {base.name}."
    return base.model_copy(update={"name": name, "description": description, "models": models})
