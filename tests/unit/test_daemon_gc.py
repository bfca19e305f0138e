"""`quiet_collector`: what the daemon loaded before serving is frozen out of later
collections, and young collections run less often than CPython's default."""

from __future__ import annotations

import gc

from gpumux.daemon.daemon import GC_YOUNG_THRESHOLD, quiet_collector


def test_start_up_objects_are_frozen_and_young_collections_are_rarer() -> None:
    threshold = gc.get_threshold()
    try:
        quiet_collector()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *threshold[1:])
        assert threshold[0] < GC_YOUNG_THRESHOLD
    finally:  # this test process is not the daemon
        gc.unfreeze()
        gc.set_threshold(*threshold)
