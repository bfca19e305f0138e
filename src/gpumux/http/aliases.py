"""Model aliases at the front door: which model a requested name means, and what to forward.

Owns: turning a request's `model` (a model's name, one of its `aliases` or one of its LoRA
`adapters`) into the configured model, rewriting the forwarded body's `model` to that
model's name for an alias, and the alias and adapter entries of `/v1/models`.
Does not: validate aliases (config does: an alias names one model, never a model's own
name) or decide anything about scheduling (the scheduler only ever sees model names).

Why rewrite rather than pass the alias through: each backend is started with
`--served-model-name NAME`, and vLLM answers 404 to any other `model` (only served names
and loaded LoRA adapters pass its check). Serving the aliases as extra served names would
tie them to the process, so adding one on SIGHUP would restart the backend; rewriting keeps
aliases a proxy-only fact. Only a request that used an alias is re-encoded; every other
body is still forwarded byte for byte.

An adapter is the other way round: vLLM serves a loaded adapter under its own name, so the
request goes to the adapter's model (queue, switch and lease on it) with the body as sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from gpumux.core.config import Config


@dataclass(frozen=True)
class Resolved:
    """A request's model: `model` is the configured name (or, when unknown, what was asked)."""

    model: str
    requested: str
    known: bool
    #: The LoRA adapter the request named (served by `model`, forwarded unchanged).
    adapter: str | None = None

    @property
    def via_alias(self) -> str | None:
        if self.adapter is not None or not self.known or self.requested == self.model:
            return None
        return self.requested


def resolve(config: Config, requested: str) -> Resolved:
    model = config.resolve_model(requested)
    if model is not None:
        return Resolved(model=model, requested=requested, known=True)
    base = config.adapter_targets.get(requested)
    if base is not None:
        return Resolved(model=base, requested=requested, known=True, adapter=requested)
    return Resolved(model=requested, requested=requested, known=False)


def with_model(body: bytes, model: str) -> bytes:
    """`body` (a JSON object the proxy already parsed once) with `model` set to `model`.

    Numbers survive: Python keeps integers exact and writes floats in their shortest
    round-tripping form; non-ASCII text is kept as UTF-8.
    """
    document = json.loads(body)
    document["model"] = model
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def alias_entries(config: Config, created: int) -> list[dict[str, object]]:
    """`/v1/models` entries for aliases, marked with the model each one names."""
    return [
        {
            "id": alias,
            "object": "model",
            "created": created,
            "owned_by": "gpumux",
            "root": config.models[target].model_path,
            "alias_of": target,
        }
        for alias, target in config.alias_targets.items()
    ]


def adapter_entries(config: Config, created: int) -> list[dict[str, object]]:
    """`/v1/models` entries for LoRA adapters, as vLLM lists them: `root` is the adapter's
    path, `parent` the model serving it."""
    return [
        {
            "id": adapter,
            "object": "model",
            "created": created,
            "owned_by": "gpumux",
            "root": path,
            "parent": name,
        }
        for name, model in config.models.items()
        for adapter, path in model.adapters.items()
    ]
