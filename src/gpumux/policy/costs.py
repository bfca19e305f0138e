"""Learned switch costs: exponentially weighted averages of measured evict and wake times.

Owns: the cost table per model and operation (`evict`, `wake`, `cold_start`, keyed by the
eviction strategy) and per switch (from, to, strategy), and its plain-dict form for
persistence and the status API.
Does not: measure anything or read the clock (the scheduler reports durations of the
evict and wake phases only; drain and cooldown are excluded by construction). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

#: Weight of a new sample. 0.3 follows a change within a few switches without jumping
#: on one outlier.
ALPHA = 0.3

#: Prior guesses (seconds) before anything was measured, by operation.
#: "drain" is how long a victim's in-flight requests took to finish; it is kept apart
#: from the switch costs (which exclude it) and only helps policies plan a tour of models.
PRIOR_SECS = {"evict": 2.0, "wake": 5.0, "cold_start": 30.0, "drain": 0.0}


def _ewma(old: float | None, sample: float) -> float:
    return sample if old is None else (1 - ALPHA) * old + ALPHA * sample


@dataclass
class SwitchCosts:
    ops: dict[str, float] = field(default_factory=dict)  # "model|op|strategy" -> secs
    switches: dict[str, float] = field(default_factory=dict)  # "from|to|strategy" -> secs
    samples: dict[str, int] = field(default_factory=dict)

    def observe_op(self, model: str, op: str, strategy: str, secs: float) -> None:
        key = f"{model}|{op}|{strategy}"
        self.ops[key] = _ewma(self.ops.get(key), secs)
        self.samples[key] = self.samples.get(key, 0) + 1

    def observe_switch(self, source: str | None, target: str, strategy: str, secs: float) -> None:
        key = f"{source or '-'}|{target}|{strategy}"
        self.switches[key] = _ewma(self.switches.get(key), secs)
        self.samples[key] = self.samples.get(key, 0) + 1

    def op_cost(self, model: str, op: str, strategy: str) -> float:
        return self.ops.get(f"{model}|{op}|{strategy}", PRIOR_SECS[op])

    def learned(self, model: str, op: str, strategy: str) -> float | None:
        """The measured average, or None before the first sample (the caller's prior)."""
        return self.ops.get(f"{model}|{op}|{strategy}")

    def switch_cost(self, source: str | None, target: str, strategy: str) -> float:
        measured = self.switches.get(f"{source or '-'}|{target}|{strategy}")
        if measured is not None:
            return measured
        evict = self.op_cost(source, "evict", strategy) if source else 0.0
        return evict + self.op_cost(target, "wake", strategy)

    def to_dict(self) -> dict[str, dict[str, float] | dict[str, int]]:
        return {
            "ops": dict(self.ops),
            "switches": dict(self.switches),
            "samples": dict(self.samples),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> SwitchCosts:
        def floats(name: str) -> dict[str, float]:
            raw = data.get(name)
            if not isinstance(raw, dict):
                return {}
            return {
                str(k): float(v) for k, v in raw.items() if isinstance(v, int | float) and v >= 0
            }

        samples_raw = data.get("samples")
        samples = (
            {str(k): int(v) for k, v in samples_raw.items() if isinstance(v, int)}
            if isinstance(samples_raw, dict)
            else {}
        )
        return cls(ops=floats("ops"), switches=floats("switches"), samples=samples)
