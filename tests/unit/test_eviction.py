"""The eviction ladder as data: evict and wake plans for all 12 weights+process pairs."""

from __future__ import annotations

import pytest

from gpumux.core.config import EvictionConfig, ProcessStrategy, WeightStrategy
from gpumux.core.eviction import PHASE_OF, Step, evict_plan, wake_plan
from gpumux.core.states import MODEL_TRANSITIONS, WAKEABLE_STATES, ModelState

pytestmark = pytest.mark.unit

W, P, S, M = WeightStrategy, ProcessStrategy, Step, ModelState

#: The oracle, written out by hand from design §3 (not derived from the module's tables).
EVICT: dict[tuple[WeightStrategy, ProcessStrategy], tuple[tuple[Step, ...], ModelState]] = {
    (W.RETAIN, P.KEEP_RUNNING): ((), M.SLEEPING),  # rejected by config; the data is still total
    (W.RETAIN, P.CUDA_SUSPEND): ((S.CUDA_SUSPEND,), M.SUSPENDED),
    (W.RETAIN, P.CHECKPOINT): ((S.CRIU_DUMP,), M.CHECKPOINTED),
    (W.RETAIN, P.STOP): ((S.STOP,), M.STOPPED),
    (W.OFFLOAD, P.KEEP_RUNNING): ((S.SLEEP_OFFLOAD,), M.SLEEPING),
    (W.OFFLOAD, P.CUDA_SUSPEND): ((S.SLEEP_OFFLOAD, S.CUDA_SUSPEND), M.SUSPENDED),
    (W.OFFLOAD, P.CHECKPOINT): ((S.SLEEP_OFFLOAD, S.CRIU_DUMP), M.CHECKPOINTED),
    (W.OFFLOAD, P.STOP): ((S.STOP,), M.STOPPED),
    (W.DISCARD, P.KEEP_RUNNING): ((S.SLEEP_DISCARD,), M.SLEEPING),
    (W.DISCARD, P.CUDA_SUSPEND): ((S.SLEEP_DISCARD, S.CUDA_SUSPEND), M.SUSPENDED),
    (W.DISCARD, P.CHECKPOINT): ((S.SLEEP_DISCARD, S.CRIU_DUMP), M.CHECKPOINTED),
    (W.DISCARD, P.STOP): ((S.STOP,), M.STOPPED),
}

DISCARD_WAKE = (S.WAKE_WEIGHTS, S.RELOAD_WEIGHTS, S.WAKE_KV_CACHE, S.RESET_PREFIX_CACHE)
WEIGHTS_WAKE = {W.RETAIN: (), W.OFFLOAD: (S.WAKE_ALL,), W.DISCARD: DISCARD_WAKE}
PROCESS_WAKE = {
    P.KEEP_RUNNING: (),
    P.CUDA_SUSPEND: (S.CUDA_RESUME,),
    P.CHECKPOINT: (S.CRIU_RESTORE,),
}

WAKE: dict[tuple[WeightStrategy, ProcessStrategy], tuple[Step, ...]] = {
    (w, p): (S.COLD_START,) if p is P.STOP else PROCESS_WAKE[p] + WEIGHTS_WAKE[w]
    for w in W
    for p in P
}

PAIRS = [(w, p) for w in W for p in P]
IDS = [f"{w.value}+{p.value}" for w, p in PAIRS]


def test_oracle_covers_all_twelve_pairs() -> None:
    """The hand-written tables name every weights+process pair exactly once."""
    assert len(PAIRS) == 12
    assert set(EVICT) == set(PAIRS) == set(WAKE)


@pytest.mark.parametrize(("weights", "process"), PAIRS, ids=IDS)
def test_evict_plan(weights: WeightStrategy, process: ProcessStrategy) -> None:
    """Eviction runs the weights step, then the process step, and rests in the matching state."""
    assert evict_plan(EvictionConfig(weights=weights, process=process)) == EVICT[weights, process]


@pytest.mark.parametrize(("weights", "process"), PAIRS, ids=IDS)
@pytest.mark.parametrize("warmup", [False, True], ids=["cold", "warmup"])
def test_wake_plan_from_resting_state(
    weights: WeightStrategy, process: ProcessStrategy, warmup: bool
) -> None:
    """Waking reverses eviction (process first, then weights) and ends with the warm-up if asked."""
    _, resting = evict_plan(EvictionConfig(weights=weights, process=process))
    expected = WAKE[weights, process] + ((S.WARMUP,) if warmup else ())
    assert wake_plan(weights, resting, warmup=warmup) == expected


@pytest.mark.parametrize("process", [p for p in P if p is not P.STOP])
def test_discard_wake_reloads_weights_before_kv_cache(process: ProcessStrategy) -> None:
    """After level 2, reload_weights sits between the weights and kv_cache wakes (else garbage)."""
    _, resting = evict_plan(EvictionConfig(weights=W.DISCARD, process=process))
    plan = wake_plan(W.DISCARD, resting, warmup=True)
    assert plan[-5:] == (*DISCARD_WAKE, S.WARMUP)


@pytest.mark.parametrize("weights", list(W))
def test_stop_skips_the_weights_step(weights: WeightStrategy) -> None:
    """Stopping frees everything, so no /sleep call delays the kill."""
    steps, resting = evict_plan(EvictionConfig(weights=weights, process=P.STOP))
    assert steps == (S.STOP,)
    assert resting is M.STOPPED


@pytest.mark.parametrize("warmup", [False, True])
def test_failed_model_wakes_by_cold_start(warmup: bool) -> None:
    """A failed model comes back through a cold start, whatever it was evicted with."""
    for weights in W:
        plan = wake_plan(weights, M.FAILED, warmup=warmup)
        assert plan == ((S.COLD_START, S.WARMUP) if warmup else (S.COLD_START,))


@pytest.mark.parametrize(
    "state",
    [s for s in M if s not in WAKEABLE_STATES | {M.STOPPED, M.FAILED}],
)
def test_wake_plan_refuses_states_that_cannot_wake(state: ModelState) -> None:
    """Asking to wake an awake or transitional model is a programming error."""
    with pytest.raises(ValueError, match="cannot wake"):
        wake_plan(W.OFFLOAD, state, warmup=False)


def test_every_resting_state_is_a_legal_end_of_evicting() -> None:
    """Each plan's resting state is an edge out of `evicting` in the model table."""
    for _, resting in EVICT.values():
        assert resting in MODEL_TRANSITIONS[M.EVICTING]


def test_phase_of_covers_every_step() -> None:
    """Every step is measured under a named phase (gpumux_switch_phase_seconds{phase})."""
    assert set(PHASE_OF) == set(Step)
    for phase in PHASE_OF.values():
        assert phase
        assert phase.isidentifier()
        assert phase == phase.lower()


def test_every_step_appears_in_some_plan() -> None:
    """No step is dead data: the plans use them all."""
    used: set[Step] = set()
    for weights, process in PAIRS:
        steps, resting = evict_plan(EvictionConfig(weights=weights, process=process))
        used.update(steps)
        used.update(wake_plan(weights, resting, warmup=True))
    assert used == set(Step)
