"""Eviction ahead of need: whether an idle model should leave before anyone asks for its GPU.

Owns: the rule. An idle model A (no queued, no in-flight request, past its minimum
visit) leaves in the background when some model B that is not awake needs A's memory
(placement would pick A as B's victim) and

- B is needed first: B has queued requests, or B's next request is predicted before
  A's (`policy.demand`); and
- A is not needed back soon: A's next request is predicted no earlier than
  `AHEAD_MARGIN` × A's round trip (evict + wake) from now.

The second clause is the no-thrash rule: under stationary load a model evicted ahead is
never woken again within its own round-trip cost (a hypothesis property checks it in
virtual time). Then the next switch to B pays only B's wake: A's eviction has been paid
while nobody waited.
Does not: drain or evict (the scheduler's `Ahead` part does, with the same drain rules
as any eviction), or judge feasibility (placement). Pure: times are passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: A's predicted idle time must cover this many of its round trips. Above 1 so that an
#: estimate a little optimistic about A's next arrival still never makes it thrash.
AHEAD_MARGIN = 1.5


@dataclass(frozen=True)
class Idler:
    """The model that might leave."""

    alias: str
    next_need_at: float  # predicted next request (inf: none expected)
    round_trip_secs: float  # learned evict + wake


@dataclass(frozen=True)
class Contender:
    """A model that is not awake and would evict the idler to come up."""

    alias: str
    queued: int
    next_need_at: float

    def needed_at(self, now: float) -> float:
        return now if self.queued else self.next_need_at


def should_leave(idler: Idler, contender: Contender, now: float) -> bool:
    """Whether `idler` should be evicted now, ahead of `contender`'s need."""
    contender_at = contender.needed_at(now)
    if math.isinf(contender_at) or contender_at >= idler.next_need_at:
        return False  # nobody is needed before the idler itself
    return idler.next_need_at - now >= AHEAD_MARGIN * idler.round_trip_secs
