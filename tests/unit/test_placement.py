"""Placement: fit, projected fit during evictions, and victim order."""

from __future__ import annotations

import pytest

from gpumux.core.placement import Tenant, admit, usage
from gpumux.core.states import ModelState

pytestmark = pytest.mark.unit

GIB = 1024**3
CAP = {0: 80 * GIB}


def tenant(alias: str, state: ModelState, util: float = 0.45, **kw: object) -> Tenant:
    fields: dict[str, object] = {
        "alias": alias,
        "gpus": (0,),
        "utilization": util,
        "state": state,
        "residual_bytes": GIB // 2,
        "resting_state": ModelState.SLEEPING,
        "idle": True,
        "last_used_at": 0.0,
        "evictable_at": 0.0,
    }
    fields.update(kw)
    return Tenant(**fields)  # type: ignore[arg-type]


def test_two_half_models_fit_together() -> None:
    """Two models at 0.45 are awake at once on one GPU."""
    tenants = {"a": tenant("a", ModelState.READY), "b": tenant("b", ModelState.STOPPED)}
    assert admit("b", tenants, CAP, now=0).fits_now


def test_third_half_model_needs_a_victim() -> None:
    """The third 0.45 model does not fit; exactly one victim is named."""
    tenants = {
        "a": tenant("a", ModelState.READY, last_used_at=5),
        "b": tenant("b", ModelState.READY, last_used_at=1),
        "c": tenant("c", ModelState.SLEEPING),
    }
    admission = admit("c", tenants, CAP, now=10)
    assert not admission.fits_now
    assert admission.victims == ("b",)  # least recently used goes first


def test_idle_victims_before_busy_ones() -> None:
    tenants = {
        "busy": tenant("busy", ModelState.READY, util=0.9, idle=False, last_used_at=0),
        "idle": tenant("idle", ModelState.READY, util=0.05, idle=True, last_used_at=9),
        "t": tenant("t", ModelState.STOPPED, util=0.9),
    }
    admission = admit("t", tenants, CAP, now=10)
    assert admission.victims == ("idle", "busy")


def test_eviction_under_way_means_wait_not_new_victims() -> None:
    tenants = {
        "a": tenant("a", ModelState.EVICTING, util=0.9),
        "b": tenant("b", ModelState.STOPPED, util=0.9),
    }
    admission = admit("b", tenants, CAP, now=0)
    assert admission.blocked
    assert admission.victims == ()
    assert admission.impossible is None


def test_min_active_defers_the_victim() -> None:
    tenants = {
        "a": tenant("a", ModelState.READY, util=0.9, evictable_at=7.0),
        "b": tenant("b", ModelState.STOPPED, util=0.9),
    }
    admission = admit("b", tenants, CAP, now=5.0)
    assert admission.victims == ()
    assert admission.wait_until == 7.0


def test_pinned_model_is_never_a_victim() -> None:
    tenants = {
        "a": tenant("a", ModelState.READY, util=0.9, pinned=True),
        "b": tenant("b", ModelState.STOPPED, util=0.9),
    }
    assert admit("b", tenants, CAP, now=0).victims == ()


def test_models_on_other_gpus_are_not_victims() -> None:
    cap = {0: 80 * GIB, 1: 80 * GIB}
    tenants = {
        "a": tenant("a", ModelState.READY, util=0.9, gpus=(1,)),
        "b": tenant("b", ModelState.STOPPED, util=0.9, gpus=(0,)),
    }
    assert admit("b", tenants, cap, now=0).fits_now


def test_tp2_model_needs_both_gpus() -> None:
    cap = {0: 80 * GIB, 1: 80 * GIB}
    tenants = {
        "a": tenant("a", ModelState.READY, util=0.9, gpus=(1,)),
        "big": tenant("big", ModelState.STOPPED, util=0.9, gpus=(0, 1)),
    }
    assert admit("big", tenants, cap, now=0).victims == ("a",)


def test_unknown_gpu_is_impossible() -> None:
    tenants = {"a": tenant("a", ModelState.STOPPED, gpus=(3,))}
    assert admit("a", tenants, CAP, now=0).impossible


def test_sleeping_residual_is_counted() -> None:
    tenants = [tenant("a", ModelState.SLEEPING), tenant("b", ModelState.READY)]
    assert usage(tenants, CAP, after_evictions=False)[0] == GIB // 2 + int(0.45 * 80 * GIB)


def test_a_stopping_tree_counts_what_it_held() -> None:
    """A sleeper whose root crashed is being stopped: it holds its residual, not a full share."""
    crashed = tenant("a", ModelState.STOPPING, util=0.3, holds=ModelState.SLEEPING)
    assert usage([crashed], CAP, after_evictions=False)[0] == GIB // 2
    tenants = {"a": crashed, "b": tenant("b", ModelState.READY, util=0.9)}
    assert admit(
        "c", {**tenants, "c": tenant("c", ModelState.STOPPED, util=0.1)}, CAP, 0
    ).victims == ("b",)
