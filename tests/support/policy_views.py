"""Hand-built policy inputs: a `ModelView` with sensible defaults, for policy unit tests."""

from __future__ import annotations

from gpumux.core.states import ModelState
from gpumux.policy.base import ModelView


def model_view(alias: str, state: ModelState = ModelState.SLEEPING, **fields: object) -> ModelView:
    """A model on GPU 0 with nothing queued or in flight; `fields` override anything."""
    values: dict[str, object] = {
        "alias": alias,
        "state": state,
        "queued": 0,
        "oldest_enqueued_at": None,
        "inflight": 0,
        "ready_since": None,
        "last_used_at": 0.0,
        "gpus": (0,),
    }
    values.update(fields)
    return ModelView(**values)  # type: ignore[arg-type]
