"""The rules a config must keep across fields and models, and parsing a document.

Owns: `parse_config` (schema, then every cross-field rule, reported at once as
`ConfigProblems`), the errors (`semantic_errors`: port collisions, admin exposure,
aliases, adapters, preload, pins, idle ladders, checkpoint strategies) and the warnings
(`semantic_warnings`).
Does not: define fields or defaults (`config`), read files (`daemon/config_file`) or
apply anything. Pure: no I/O, no clock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from pydantic import ValidationError

from gpumux.core.config import (
    DISCRIMINATOR_TAGS,
    LORA_FLAG,
    Config,
    ModelConfig,
    ProcessStrategy,
    WeightStrategy,
    deeper,
)


class ConfigProblems(Exception):
    """Every problem found in a config, so the operator fixes them in one pass."""

    def __init__(self, errors: list[str], warnings: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors
        self.warnings = warnings


def parse_config(raw: object) -> tuple[Config, list[str]]:
    """Validate a decoded JSON document; return the config and its warnings.

    Raises ConfigProblems listing every schema error, or (when the schema holds) every
    cross-field error.
    """
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        errors = [_format_pydantic_error(e) for e in exc.errors()]
        errors.extend(_raw_port_collisions(raw))
        raise ConfigProblems(errors, []) from None
    errors = list(semantic_errors(config))
    warnings = list(semantic_warnings(config))
    if errors:
        raise ConfigProblems(errors, warnings)
    return config, warnings


def _format_pydantic_error(error: object) -> str:
    assert isinstance(error, dict)
    loc = (str(part) for part in error.get("loc", ()))
    where = ".".join(p for p in loc if p not in DISCRIMINATOR_TAGS) or "(top level)"
    message = str(error.get("msg", "invalid"))
    if error.get("type") == "extra_forbidden":
        message = "unknown key"
    return f"{where}: {message}"


def _raw_port_collisions(raw: object) -> Iterator[str]:
    """Port collisions are worth reporting even when other fields fail the schema."""
    if not isinstance(raw, dict):
        return
    claims: list[tuple[str, object]] = [
        ("port", raw.get("port", 3000)),
        ("metrics_port", raw.get("metrics_port", 9090)),
        ("admin_port", raw.get("admin_port")),
        ("agent_port", raw.get("agent_port")),
    ]
    models = raw.get("models")
    if isinstance(models, dict):
        claims += [
            (f"models.{alias}.port", m.get("port"))
            for alias, m in models.items()
            if isinstance(m, dict)
        ]
    yield from _collisions(
        [(name, p) for name, p in claims if type(p) is int and p > 0]  # bool is not a port
    )


def _collisions(claims: list[tuple[str, int]]) -> Iterator[str]:
    owner: dict[int, str] = {}
    for name, port in claims:
        if port in owner:
            yield f"{name}: port {port} is already used by {owner[port]}"
        else:
            owner[port] = name


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, as written in a config) is this machine only:
    `localhost` or a loopback address. Shared by the config's rules, the admin token's
    default and the fleet's node checks."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _checkpoint_errors(config: Config) -> Iterator[str]:
    store = config.checkpoint.object_store if config.checkpoint else None
    if store is None:
        return
    if not store.endpoint.startswith(("http://", "https://")):
        yield "checkpoint.object_store.endpoint: must be an http:// or https:// URL"
    if not store.bucket.strip():
        yield "checkpoint.object_store.bucket: must name a bucket"
    if store.manifest_key_env is not None and not store.manifest_key_env.strip():
        yield "checkpoint.object_store.manifest_key_env: must name an environment variable"


def semantic_errors(config: Config) -> Iterator[str]:
    claims = [("port", config.port)]
    if config.metrics_port:
        claims.append(("metrics_port", config.metrics_port))
    if config.admin_port:
        claims.append(("admin_port", config.admin_port))
    if config.agent_port:
        claims.append(("agent_port", config.agent_port))
    claims += [(f"models.{alias}.port", m.port) for alias, m in config.models.items()]
    yield from _collisions(claims)
    yield from _checkpoint_errors(config)
    yield from _alias_errors(config)
    yield from _adapter_errors(config)
    yield from _idle_errors(config)
    yield from _preload_errors(config)
    yield from pin_overcommit(config.models, [n for n, m in config.models.items() if m.pinned])

    exposed = config.admin_port is not None and not is_loopback(config.admin_host)
    if exposed and not config.admin_token_env:
        yield (
            f"admin_host: {config.admin_host} is not loopback; set admin_token_env "
            "so the admin API requires a token"
        )
    if not config.vllm_argv:
        yield "vllm_command: must name a program"

    gpu_count = len(config.gpu.fake_capacity_gib) if config.gpu.probe == "fake" else None
    for alias, model in config.models.items():
        where = f"models.{alias}"
        if not alias.strip():
            yield f"{where}: alias must be a non-empty model name"
        eviction = config.eviction_for(alias)
        source = "eviction" if model.eviction else "policy.eviction (the default)"
        reason = eviction.nonsense_reason()
        if reason:
            yield f"{where}.{source}: {reason}"
        if eviction.needs_checkpoint_section and config.checkpoint is None:
            yield f"{where}: {source} {eviction} needs a top-level `checkpoint` section"
        if model.checkpoint_path is not None and config.checkpoint is None:
            yield f"{where}.checkpoint_path: needs a top-level `checkpoint` section"
        try:
            tp = model.tensor_parallel_size
            util = model.gpu_memory_utilization
        except ValueError:
            yield (
                f"{where}.extra_args: --tensor-parallel-size / --gpu-memory-utilization "
                "must be numbers"
            )
            continue
        if tp < 1:
            yield f"{where}.extra_args: --tensor-parallel-size must be at least 1"
        if not 0 < util <= 1:
            yield f"{where}.extra_args: --gpu-memory-utilization must be in (0, 1], got {util}"
        if model.gpus is not None:
            if len(model.gpus) != tp:
                yield f"{where}.gpus: lists {len(model.gpus)} GPUs but tensor parallel size is {tp}"
            if len(set(model.gpus)) != len(model.gpus):
                yield f"{where}.gpus: lists a GPU twice"
            if any(g < 0 for g in model.gpus):
                yield f"{where}.gpus: GPU indices are non-negative"
        if gpu_count is not None and any(g >= gpu_count for g in model.gpu_indices):
            yield (
                f"{where}.gpus: uses GPU {max(model.gpu_indices)} "
                f"but gpu.fake_capacity_gib lists {gpu_count}"
            )
        for flag in ("--host", "--port", "--served-model-name", "--enable-sleep-mode"):
            if model.has_flag(flag):
                yield f"{where}.extra_args: {flag} is set by gpumux; remove it"


def _alias_errors(config: Config) -> Iterator[str]:
    """An alias names exactly one model and is never a model's own name."""
    claimed: dict[str, str] = {}
    for name, model in config.models.items():
        where = f"models.{name}.aliases"
        for alias in model.aliases:
            if not alias.strip():
                yield f"{where}: an alias must be a non-empty name"
            elif alias in config.models:
                yield f"{where}: {alias!r} is already the name of model {alias!r}"
            elif alias in claimed:
                owner = claimed[alias]
                yield (
                    f"{where}: {alias!r} is listed twice"
                    if owner == name
                    else f"{where}: {alias!r} is already an alias of model {owner!r}"
                )
            else:
                claimed[alias] = name


def _adapter_errors(config: Config) -> Iterator[str]:
    """An adapter name is unique among models, aliases and adapters; its model enables LoRA.

    Paths are checked where files can be read (`daemon.config_file`), not here."""
    aliases = config.alias_targets
    claimed: dict[str, str] = {}
    for name, model in config.models.items():
        where = f"models.{name}.adapters"
        for adapter, path in model.adapters.items():
            if not adapter.strip():
                yield f"{where}: an adapter name must be non-empty"
            elif adapter in config.models:
                yield f"{where}: {adapter!r} is already the name of model {adapter!r}"
            elif adapter in aliases:
                yield f"{where}: {adapter!r} is already an alias of model {aliases[adapter]!r}"
            elif adapter in claimed:
                yield f"{where}: {adapter!r} is already an adapter of model {claimed[adapter]!r}"
            else:
                claimed[adapter] = name
            if not path.strip():
                yield f"{where}.{adapter}: the adapter's path must be non-empty"
        if model.adapters and not model.has_flag(LORA_FLAG):
            yield (
                f"{where}: serving LoRA adapters needs vLLM's LoRA support; add "
                f"{LORA_FLAG!r} to models.{name}.extra_args (and '--max-lora-rank', 'R' "
                "when an adapter's rank is above vLLM's default 16; '--max-loras', 'N' to "
                "run N adapters in one batch)"
            )


def _preload_errors(config: Config) -> Iterator[str]:
    seen: set[str] = set()
    for i, name in enumerate(config.preload):
        model = config.resolve_model(name)
        if model is None:
            yield f"preload[{i}]: no model or alias is named {name!r}"
        elif model in seen:
            yield f"preload[{i}]: {name!r} brings up model {model!r} a second time"
        else:
            seen.add(model)


def pin_overcommit(models: dict[str, ModelConfig], pinned: list[str]) -> Iterator[str]:
    """Why the `pinned` models cannot all be awake together, if they cannot: each awake
    model reserves its `--gpu-memory-utilization` share of every GPU it uses."""
    shares: dict[int, list[tuple[str, float]]] = {}
    for name in pinned:
        model = models[name]
        try:
            share = model.gpu_memory_utilization
        except ValueError:
            continue  # semantic_errors reports the malformed flag
        for gpu in model.gpu_indices:
            shares.setdefault(gpu, []).append((name, share))
    for gpu, claims in sorted(shares.items()):
        total = sum(share for _, share in claims)
        if total > 1.0 + 1e-9:
            names = ", ".join(f"{n} ({share:g})" for n, share in claims)
            yield (
                f"pinned: {names} cannot be awake together on GPU {gpu} "
                f"(their memory shares add up to {total:g} > 1)"
            )


def _idle_errors(config: Config) -> Iterator[str]:
    """Each idle step later and deeper than the last; later steps can only stop."""
    for name, model in config.models.items():
        where = f"models.{name}.idle"
        if model.idle is not None and model.ttl_secs is not None:
            yield f"models.{name}: set `ttl_secs` or `idle`, not both"
        ladder = model.idle or []  # a `ttl_secs` step uses the eviction checked above
        for i, step in enumerate(ladder):
            reason = step.eviction.nonsense_reason()
            if reason:
                yield f"{where}[{i}].eviction: {reason}"
            if step.eviction.needs_checkpoint_section and config.checkpoint is None:
                yield f"{where}[{i}].eviction: {step.eviction} needs a `checkpoint` section"
            if i == 0:
                continue
            before = ladder[i - 1]
            if step.after_secs <= before.after_secs:
                yield f"{where}[{i}].after_secs: must be later than step {i - 1}'s"
            if not deeper(step.eviction, before.eviction):
                yield f"{where}[{i}].eviction: {step.eviction} is not deeper than {before.eviction}"
            elif step.eviction.process is not ProcessStrategy.STOP:
                yield (
                    f"{where}[{i}].eviction: a later step can only stop the process "
                    "(a resting model is not moved from one eviction to another)"
                )


def _tp_or_one(model: ModelConfig) -> int:
    """Tensor parallel size, or 1 where extra_args spell it wrong (semantic_errors reports that)."""
    try:
        return model.tensor_parallel_size
    except ValueError:
        return 1


def semantic_warnings(config: Config) -> Iterator[str]:
    if config.agent_port is not None and config.agent_host in ("", "0.0.0.0", "::"):
        yield (
            f"agent_host: {config.agent_host or '(empty)'} answers anyone who can reach "
            "agent_port with model names and states (the agent protocol has no token); "
            "bind the address HAProxy connects to"
        )
    for alias, model in config.models.items():
        where = f"models.{alias}"
        eviction = config.eviction_for(alias)
        if eviction.needs_checkpoint_section and _tp_or_one(model) > 1:
            for flag, why in (
                ("--enforce-eager", "CUDA graphs hold NCCL handles that do not survive a suspend"),
                (
                    "--disable-custom-all-reduce",
                    "custom all-reduce IPC buffers do not survive a suspend",
                ),
            ):
                if not model.has_flag(flag):
                    yield f"{where}: TP>1 with {eviction} but no {flag} ({why})"
            if not model.nccl_safe_env:
                yield f"{where}: TP>1 with {eviction} and nccl_safe_env false (NCCL P2P/SHM)"
        if eviction.needs_sleep_mode and not model.enable_sleep_mode:
            yield (
                f"{where}: eviction {eviction} uses vLLM sleep but enable_sleep_mode is false; "
                "vLLM will then refuse /sleep or (CPU builds) accept it without freeing memory"
            )
        if (
            eviction.process is ProcessStrategy.STOP
            and eviction.weights is not WeightStrategy.RETAIN
        ):
            yield f"{where}: {eviction} skips the weights step (the process is stopped anyway)"
    store = config.checkpoint.object_store if config.checkpoint else None
    if store is not None and (store.access_key or store.secret_key):
        yield (
            "checkpoint.object_store: keys written in the config file; prefer AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY or the credential chain"
        )
    if store is not None and not store.manifest_key_env:
        yield (
            "checkpoint.object_store: no manifest_key_env, so images fetched from the bucket "
            "are not authenticated; anyone who can write the bucket can run code as root "
            "at restore (set manifest_key_env to a variable holding an HMAC key)"
        )
