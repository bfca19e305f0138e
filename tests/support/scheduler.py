"""Drives the pure scheduler core synchronously, as the async runner does, for unit tests.

`Driver` sends typed inputs at a settable `now`, records every command, and finishes
operations on demand; with `standing` it keeps the runner's shelves, so a test can take a
standing grant (`take`) and release quietly (`release_quietly`), both handed to the core
with the next input. `make_config` builds a small config on one fake 80 GiB GPU.
"""

from __future__ import annotations

from typing import Any

from gpumux.core.config import Config
from gpumux.core.states import ModelState
from gpumux.policy.registry import make_policy
from gpumux.scheduler.inputs import (
    Admin,
    AdminCommand,
    Cancel,
    HostMemory,
    Input,
    OpDone,
    Release,
    Submit,
    Tick,
)
from gpumux.scheduler.messages import (
    AdminReply,
    Command,
    Grant,
    OpOutcome,
    OpResult,
    Reject,
    StartOp,
    Stock,
)
from gpumux.scheduler.state.core import SchedulerCore
from gpumux.scheduler.state.slots import Slot

GIB = 1024**3


def make_config(util: float = 0.9, models: int = 2, **policy: Any) -> Config:
    raw: dict[str, Any] = {
        "models": {
            name: {
                "model_path": f"m/{name}",
                "port": 8100 + i,
                "extra_args": ["--gpu-memory-utilization", str(util)],
                "max_queue": 3,
            }
            for i, name in enumerate("abcdefgh"[:models])
        },
        # fifo: these tests exercise the core's mechanics under the simplest policy.
        "policy": {
            "policy_type": "fifo",
            "min_active_secs": 0,
            "request_timeout_secs": 30,
            **policy,
        },
        "gpu": {"probe": "fake", "fake_capacity_gib": [80]},
        "supervision": {"max_start_failures": 2, "restart_backoff_secs": 1},
    }
    return Config.model_validate(raw)


class Driver:
    """Feeds the core and records commands, like the async runner does."""

    def __init__(self, config: Config, *, standing: int = 0) -> None:
        self.config = config
        policy = make_policy(config.policy)
        self.core = SchedulerCore(config, policy, {0: 80 * GIB}, standing_grants=standing)
        self.shelves: dict[str, list[Grant]] = {}
        self._claims: list[tuple[int, float]] = []
        self._releases: list[tuple[int, float]] = []
        self.now = 0.0
        self.ops: dict[int, StartOp] = {}
        self.granted: list[int] = []
        self.grants: dict[int, Grant] = {}
        self.rejected: dict[int, Exception] = {}
        self.log: list[Command] = []
        self._replies = 0

    def send(self, message: Input) -> list[Command]:
        claims, releases = self._claims, self._releases
        self._claims, self._releases = [], []
        commands = self.core.handle(message, self.now, claims=claims, releases=releases)
        for c in commands:
            self.log.append(c)
            if isinstance(c, Stock):
                c.onto(self.shelves)
            elif isinstance(c, StartOp):
                self.ops[c.op.op_id] = c
            elif isinstance(c, Grant):
                self.granted.append(c.ticket)
                self.grants[c.ticket] = c
            elif isinstance(c, Reject):
                self.rejected[c.ticket] = c.error
        return commands

    def submit(self, ticket: int, model: str) -> None:
        self.send(Submit(ticket, model))

    def release(self, ticket: int) -> None:
        self.send(Release(ticket))

    def take(self, model: str) -> Grant:
        """A request takes one of `model`'s standing grants now, as `acquire` does."""
        grant = self.shelves[model].pop()
        self._claims.append((grant.ticket, self.now))
        return grant

    def release_quietly(self, ticket: int) -> None:
        """A release the core learns of with its next input, as the runner's lazy ones."""
        self._releases.append((ticket, self.now))

    def cancel(self, ticket: int) -> None:
        self.send(Cancel(ticket))

    def tick(self) -> None:
        self.send(Tick())

    def read_host(self, gib: float) -> None:
        self.send(HostMemory(int(gib * GIB)))

    def admin(self, command: AdminCommand) -> AdminReply | None:
        """Send an operator's command; its reply if it came at once (see `replies`)."""
        self._replies += 1
        reply = self._replies
        answers = [c for c in self.send(Admin(command, reply)) if isinstance(c, AdminReply)]
        return next((c for c in answers if c.reply == reply), None)

    def answer(self, command: AdminCommand) -> AdminReply:
        """Send an operator's command that must be answered at once; its reply."""
        reply = self.admin(command)
        assert reply is not None, f"{command} was not answered at once"
        return reply

    def replies(self) -> list[AdminReply]:
        return [c for c in self.log if isinstance(c, AdminReply)]

    def pending_op(self, model: str) -> StartOp:
        return next(s for s in self.ops.values() if s.op.model == model)

    def finish(self, model: str, result: OpResult = OpResult.OK) -> StartOp:
        start = self.pending_op(model)
        del self.ops[start.op.op_id]
        self.send(OpDone(OpOutcome(start.op.op_id, result, pid=1000 + start.op.op_id)))
        return start

    def slot(self, model: str) -> Slot:
        return self.core.models.slots[model]

    def state(self, model: str) -> ModelState:
        return self.slot(model).state
