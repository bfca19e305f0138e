"""Every kind of input, in random order, against the pure core (hypothesis).

The simulator's property test covers load, disconnects and failures; this one adds what
it never sends — admin commands, reloads that add, remove and change models, host-RAM
readings, health reports, shutdown — and checks that no input breaks a step (no
exception, no illegal transition), that each request and each admin command is answered
at most once, and that an answered admin command is answered with its own id.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpumux.core.config import Config
from gpumux.core.states import ModelState
from gpumux.scheduler.inputs import (
    AdminEvict,
    AdminMode,
    AdminReset,
    AdminRestart,
    AdminSwitch,
    BeginShutdown,
    Cancel,
    ForceStop,
    FoundAsleep,
    HealthFailed,
    HostMemory,
    OpDone,
    OpPhase,
    ProcessExited,
    Release,
    Reload,
    Submit,
    Tick,
)
from gpumux.scheduler.messages import AdminReply, Grant, Mode, OpKind, OpOutcome, OpResult, Reject
from tests.support.scheduler import GIB, Driver

pytestmark = pytest.mark.unit
NAMES = ("a", "b", "c")
EVICTIONS = ("offload+keep_running", "discard+keep_running", "retain+stop", "offload+cuda_suspend")


def config(evictions: list[str], drop: str | None = None, grow: bool = False) -> Config:
    models: dict[str, Any] = {}
    for i, (name, eviction) in enumerate(zip(NAMES, evictions, strict=True)):
        weights, process = eviction.split("+")
        models[name] = {
            "model_path": f"m/{name}",
            "port": 8100 + i,
            "extra_args": ["--gpu-memory-utilization", "0.45"],
            "eviction": {"weights": weights, "process": process},
            "max_queue": 3,
            "host_memory_gib": 1.0,
        }
    if drop is not None:
        del models[drop]
    if grow:
        models["a"] = {**models.get("a", models["b"]), "port": 8300}
    return Config.model_validate(
        {
            "models": models,
            "checkpoint": {},
            "gpu": {"probe": "fake", "fake_capacity_gib": [80]},
            "host_memory": {"reserve_gib": 2},
            "policy": {"min_active_secs": 0, "request_timeout_secs": 30, "drain_timeout_secs": 5},
            "supervision": {"max_start_failures": 2, "restart_backoff_secs": 1},
        }
    )


#: One step of the script: (kind, a model index or choice, a time step).
steps = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "submit",
                "submit",
                "release",
                "cancel",
                "finish",
                "finish",
                "fail",
                "phase",
                "exited",
                "unhealthy",
                "asleep",
                "host",
                "switch",
                "evict",
                "restart",
                "reset",
                "manual",
                "auto",
                "reload",
                "shutdown",
                "force",
                "tick",
            ]
        ),
        st.integers(0, 3),
        st.sampled_from([0.0, 0.1, 1.0, 6.0]),
    ),
    min_size=20,
    max_size=80,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(EVICTIONS), min_size=3, max_size=3), steps)
def test_no_input_breaks_a_step_and_each_answer_comes_once(
    evictions: list[str], script: list[tuple[str, int, float]]
) -> None:
    d = Driver(config(evictions))
    tickets = 0
    live: list[int] = []  # granted, not released yet
    seen = 0  # grants already in `live`
    for kind, pick, dt in script:
        d.now += dt
        name = (*NAMES, "zz")[pick]
        slot = d.core.models.slots.get(name)
        pid = slot.pid if slot is not None and slot.pid is not None else 4242
        ops = sorted(d.ops)
        if kind == "submit":
            tickets += 1
            d.send(Submit(tickets, name))
        elif kind == "release" and live:
            d.send(Release(live.pop(pick % len(live))))
        elif kind == "cancel" and tickets:
            d.send(Cancel(1 + pick % tickets))
        elif kind in ("finish", "fail") and ops:
            op = d.ops.pop(ops[pick % len(ops)]).op
            result = OpResult.OK if kind == "finish" else OpResult.FAILED
            d.send(OpDone(OpOutcome(op.op_id, result, pid=1000 + op.op_id, error="boom")))
        elif kind == "phase" and ops:
            op = d.ops[ops[pick % len(ops)]].op
            if op.kind is OpKind.WAKE:
                d.send(OpPhase(op.op_id, ModelState.STARTING))
        elif kind == "exited":
            d.send(ProcessExited(name, pid, 137))
        elif kind == "unhealthy":
            d.send(HealthFailed(name, pid))
        elif kind == "asleep":
            d.send(FoundAsleep(name, pid))
        elif kind == "host":
            d.send(HostMemory(pick * GIB))
        elif kind == "switch":
            d.admin(AdminSwitch(name))
        elif kind == "evict":
            d.admin(AdminEvict(name))
        elif kind == "restart":
            d.admin(AdminRestart(name))
        elif kind == "reset":
            d.admin(AdminReset(name))
        elif kind in ("manual", "auto"):
            d.admin(AdminMode(Mode(kind), name if pick < 3 else None))
        elif kind == "reload":
            d.admin(Reload(config(evictions, drop=NAMES[pick % 3], grow=pick == 3)))
        elif kind == "shutdown":
            d.send(BeginShutdown())
        elif kind == "force":
            d.send(ForceStop())
        else:
            d.send(Tick())
        live += d.granted[seen:]
        seen = len(d.granted)
    answers = Counter(c.ticket for c in d.log if isinstance(c, Grant | Reject))
    assert all(n == 1 for n in answers.values()), answers
    replies = Counter(c.reply for c in d.log if isinstance(c, AdminReply))
    assert all(n == 1 for n in replies.values()), replies
