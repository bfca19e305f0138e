"""HAProxy's agent-check protocol for one node: parse what HAProxy asks, answer from status.

Owns: the request grammar, the reply as a pure function of (`NodeStatus`, request), and
the weight a model gets from its state and learned wake cost.
Does not: do I/O (`responder` owns the socket) or read the scheduler (node status does).

HAProxy connects to `agent_port`, sends the server's `agent-send` string and reads one
line back (then either side closes). Here the request is one line:

    <model>[ <tier>]\n        tier: awake | asleep | cold (the default) | queue

and the reply one of

    up ready <weight>%\n   route here, with this share of the server's configured weight
    drain\n                not for this tier now (see below)
    maint\n                never: unknown model, node not serving, or a malformed request

Without a tier word the answer is the node's plain one: awake and not saturated → up at
full weight; asleep → up with a weight that falls with its learned wake cost; cannot be
brought up now without evicting a pinned or busy model (or failed) → drain. A tier word
narrows it: `awake` and `asleep` drain a model colder than that; `queue` widens it, up
(at 1%) for a model that cannot come up now but whose request would wait its turn here.

Every reply names the admin state (`ready` clears an earlier `drain` or `maint`: only the
agent can undo what the agent set). The generated haproxy.cfg asks about each model in
four nested tiers — awake ⊂ asleep ⊂ cold ⊂ queue — one server entry per node and tier,
so HAProxy prefers a node where the model is awake, then one where it sleeps, then one
that can start it without evicting a busy model, then one where it can wait, and a tier
never empties while a model moves between tiers.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

from gpumux.admin.node import ModelStatus, NodeStatus
from gpumux.core.states import ModelState

M = ModelState
#: Longest request line accepted (a model name and a tier word).
MAX_REQUEST_BYTES = 512
#: Weights, as a percentage of the server's configured weight (the config sets 100).
READY_WEIGHT = 100
SATURATED_WEIGHT = 50  # awake but at its concurrency: another awake replica gets more
COMING_UP_WEIGHT = 30  # a bring-up under way serves the burst that caused it
ASLEEP_MAX_WEIGHT = 90
QUEUE_WEIGHT = 1  # a last resort: it waits for a busy model to be drained
#: A wake this long (seconds) gets half of ASLEEP_MAX_WEIGHT; longer ones less.
HALF_WEIGHT_WAKE_SECS = 10.0

MAINT = "maint"
DRAIN = "drain"


class Tier(StrEnum):
    """How warm a model must be for this server entry to take its requests."""

    AWAKE = "awake"
    ASLEEP = "asleep"
    COLD = "cold"
    QUEUE = "queue"


class Warmth(IntEnum):
    """Ordered: a model serves a tier when its warmth is at most the tier's."""

    AWAKE = 0
    ASLEEP = 1
    COLD = 2


TIER_WARMTH = {
    Tier.AWAKE: Warmth.AWAKE,
    Tier.ASLEEP: Warmth.ASLEEP,
    Tier.COLD: Warmth.COLD,
    Tier.QUEUE: Warmth.COLD,
}
WARMTH: dict[ModelState, Warmth] = {
    M.READY: Warmth.AWAKE,
    M.STARTING: Warmth.AWAKE,
    M.WAKING: Warmth.AWAKE,
    # On their way to sleep, or asleep with the process (or its image) kept: a wake.
    M.DRAINING: Warmth.ASLEEP,
    M.EVICTING: Warmth.ASLEEP,
    M.SLEEPING: Warmth.ASLEEP,
    M.SUSPENDED: Warmth.ASLEEP,
    M.CHECKPOINTED: Warmth.ASLEEP,
    M.STOPPING: Warmth.COLD,
    M.STOPPED: Warmth.COLD,
    M.FAILED: Warmth.COLD,
}


@dataclass(frozen=True)
class AgentQuery:
    model: str
    tier: Tier = Tier.COLD


def parse_request(raw: bytes) -> AgentQuery | None:
    """The query in one request line, or None when it is not one (answered `maint`)."""
    if len(raw) > MAX_REQUEST_BYTES:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    words = text.strip().split()
    if not words or len(words) > 2 or any(not w.isprintable() for w in words):
        return None
    if len(words) == 1:
        return AgentQuery(words[0])
    try:
        return AgentQuery(words[0], Tier(words[1]))
    except ValueError:
        return None


def reply_for(status: NodeStatus, query: AgentQuery | None) -> str:
    """The line to send back (newline included)."""
    if query is None or not status.serving:
        return MAINT + "\n"
    model = status.models.get(query.model)
    if model is None:
        return MAINT + "\n"
    if not model.can_host_now:
        if query.tier is Tier.QUEUE and model.can_queue:
            return f"up ready {QUEUE_WEIGHT}%\n"
        return DRAIN + "\n"
    if WARMTH[model.state] > TIER_WARMTH[query.tier]:
        return DRAIN + "\n"
    return f"up ready {weight_percent(model)}%\n"


def weight_percent(model: ModelStatus) -> int:
    """1–100: awake beats coming up beats asleep; asleep falls with the learned wake cost."""
    if model.state is M.READY:
        return SATURATED_WEIGHT if model.saturated else READY_WEIGHT
    if WARMTH[model.state] is Warmth.AWAKE:
        return COMING_UP_WEIGHT
    share = HALF_WEIGHT_WAKE_SECS / (HALF_WEIGHT_WAKE_SECS + max(0.0, model.wake_cost_secs))
    return max(1, round(ASLEEP_MAX_WEIGHT * share))
