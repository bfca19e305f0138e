"""Overlap through the real daemon: the next model starts while the victim's CRIU dump runs.

Two mock models at 0.9 of one fake 80 GiB GPU; `a` is evicted with `discard+checkpoint`
(a level-2 sleep frees the GPU, then a real CRIU dump). The request for `b` cold-starts
`b` as soon as `a`'s sleep is done: `b`'s start comes before `a` is checkpointed in the
daemon's own event order (the scheduler handles its inbox in order, and the early report
is queued before the dump begins), and `b`'s backend could book its whole share in the
fake ledger at that moment, because `a`'s booking had already shrunk to its residual.
Needs root and CRIU >= 4.2 (scripts/test installs it); without them this test FAILS.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.criu import CHECKPOINT, chat, checkpoint_section
from tests.support.daemon import events, mock_model, running_daemon, wait_event
from tests.support.ledger import gpu_used

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("criu")]

GIB = 1024**3


def test_the_next_model_starts_while_the_victims_dump_runs(tmp_path: Path) -> None:
    # Real host memory in `a` gives its dump something to copy after the GPU is free.
    models = {
        "a": mock_model(eviction=CHECKPOINT, extra_args=["--mock-host-memory-gib", "0.25"]),
        "b": mock_model(),
    }
    ck = checkpoint_section(tmp_path)
    with running_daemon(tmp_path, models, checkpoint=ck) as daemon:
        first = chat(daemon, "a")
        chat(daemon, "b")
        wait_event(daemon, "state_changed", model="a", after="checkpointed")
        changes = [
            (e["model"], e["after"])
            for e in events(daemon, "state_changed")
            if e["model"] in ("a", "b")
        ]
        freed = wait_event(daemon, "gpu_freed", model="a")
        assert freed["holds"] == "sleeping"
        b_starts = changes.index(("b", "starting"))
        a_rests = changes.index(("a", "checkpointed"))
        assert changes.index(("a", "evicting")) < b_starts < a_rests
        assert gpu_used(daemon) <= 80 * GIB
        assert chat(daemon, "a", "the same prompt") == first  # the dump was whole
