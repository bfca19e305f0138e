"""The load the simulator replays: named synthetic workloads and JSONL traces.

Owns: `Arrival` (one request: time, model, token counts, and when its client gives up,
if ever), the six named workloads of design §5 as seeded generators over the config's
models, and the trace format `{"t": seconds, "model": alias, "prompt_tokens": n,
"output_tokens": n}` (one JSON object per line).
Does not: run anything. The workloads aim at the load where switching policy matters:
each keeps the GPUs well used (roughly half to three quarters of the simulated backends'
token throughput), because under a trickle every policy waits only for one switch.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Arrival:
    t: float
    model: str
    prompt_tokens: int
    output_tokens: int
    cancel_after: float | None = None  # the client disconnects this long after arriving


def _request(rng: random.Random, t: float, model: str) -> Arrival:
    # Chat-like sizes: prompts of a few hundred tokens, answers of a few hundred.
    return Arrival(t, model, rng.randint(100, 1500), rng.randint(50, 500))


def _poisson(rng: random.Random, rate: float, start: float, end: float) -> list[float]:
    times: list[float] = []
    t = start + rng.expovariate(rate)
    while t < end:
        times.append(t)
        t += rng.expovariate(rate)
    return times


def balanced(rng: random.Random, models: Sequence[str], secs: float) -> list[Arrival]:
    """Every model gets the same steady Poisson load."""
    rate = 0.8 / len(models)
    return [_request(rng, t, m) for m in models for t in _poisson(rng, rate, 0, secs)]


def bursty(rng: random.Random, models: Sequence[str], secs: float) -> list[Arrival]:
    """Each model is quiet, then a burst of 10-30 requests lands within a few seconds."""
    out: list[Arrival] = []
    for m in models:
        for start in _poisson(rng, 1 / 90, 0, secs):
            out += [_request(rng, start + rng.uniform(0, 4), m) for _ in range(rng.randint(5, 20))]
    return out


def dominant(rng: random.Random, models: Sequence[str], secs: float) -> list[Arrival]:
    """One model takes 80 % of the traffic; the rest share 20 %."""
    main, rest = models[0], list(models[1:]) or [models[0]]
    out = [_request(rng, t, main) for t in _poisson(rng, 0.64, 0, secs)]
    return out + [_request(rng, t, rng.choice(rest)) for t in _poisson(rng, 0.16, 0, secs)]


def interleave(rng: random.Random, models: Sequence[str], secs: float) -> list[Arrival]:
    """Requests alternate between the models, one every 0.5 s: the worst case for fifo."""
    count = int(secs / 1.5)
    return [_request(rng, i * 1.5, models[i % len(models)]) for i in range(count)]


def surge(rng: random.Random, models: Sequence[str], secs: float) -> list[Arrival]:
    """A light background on every model; every 5 minutes one model surges for a minute."""
    out = [_request(rng, t, m) for m in models for t in _poisson(rng, 0.1, 0, secs)]
    for i, start in enumerate(range(0, int(secs), 300)):
        m = models[i % len(models)]
        out += [_request(rng, t, m) for t in _poisson(rng, 1.5, start, min(start + 60, secs))]
    return out


def many_models(rng: random.Random, models: Sequence[str], secs: float) -> list[Arrival]:
    """Zipf-like popularity over many models (the config built by `scenario`)."""
    weights = [1 / (i + 1) for i in range(len(models))]
    return [_request(rng, t, rng.choices(models, weights)[0]) for t in _poisson(rng, 1.6, 0, secs)]


Generator = Callable[[random.Random, Sequence[str], float], list[Arrival]]
WORKLOADS: dict[str, Generator] = {
    "balanced": balanced,
    "bursty": bursty,
    "dominant": dominant,
    "interleave": interleave,
    "surge": surge,
    "many-models": many_models,
}


def generate(name: str, models: Sequence[str], secs: float, seed: int) -> list[Arrival]:
    arrivals = WORKLOADS[name](random.Random(seed), models, secs)
    return sorted((a for a in arrivals if a.t < secs), key=lambda a: (a.t, a.model))


class TraceError(ValueError):
    pass


def load_trace(path: Path, known: Sequence[str]) -> list[Arrival]:
    """Read a JSONL trace; every line must name a configured model."""
    arrivals: list[Arrival] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            arrival = Arrival(
                float(row["t"]),
                str(row["model"]),
                int(row["prompt_tokens"]),
                int(row["output_tokens"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise TraceError(f"{path}:{number}: not a trace line ({exc})") from None
        if arrival.model not in known:
            raise TraceError(f"{path}:{number}: model {arrival.model!r} is not in the config")
        if arrival.t < 0 or arrival.prompt_tokens < 0 or arrival.output_tokens < 0:
            raise TraceError(f"{path}:{number}: times and token counts must be non-negative")
        arrivals.append(arrival)
    return sorted(arrivals, key=lambda a: (a.t, a.model))
