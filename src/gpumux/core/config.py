"""The configuration schema: pydantic models and the values derived from them.

Owns: the JSON contract of design §1 (field names follow llmux v1), each section's
fields, defaults and single-field checks, and the values gpumux derives from
`extra_args` (tensor parallelism, memory utilisation, GPU indices).
Does not: judge rules that cross fields or models (`config_rules`: parsing, errors and
warnings, all at once), read files or the environment (`daemon/config_file`), resolve
secrets, or apply anything. Pure: no I/O, no clock.
Over 400 lines because the contract's sections stay in one file, each model next to the
ones it nests: a reader follows one config key from the top level to its leaf here.
"""

from __future__ import annotations

import shlex
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

GIB = 1024**3


class WeightStrategy(StrEnum):
    """What happens to the weights when a model is evicted (vLLM sleep levels)."""

    RETAIN = "retain"
    OFFLOAD = "offload"  # sleep level 1: weights to host RAM, KV cache dropped
    DISCARD = "discard"  # sleep level 2: weights and KV cache dropped


class ProcessStrategy(StrEnum):
    """What happens to the process after the weights step."""

    KEEP_RUNNING = "keep_running"
    CUDA_SUSPEND = "cuda_suspend"
    CHECKPOINT = "checkpoint"
    STOP = "stop"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EvictionConfig(_Strict):
    weights: WeightStrategy
    process: ProcessStrategy

    def __str__(self) -> str:
        return f"{self.weights.value}+{self.process.value}"

    @property
    def needs_sleep_mode(self) -> bool:
        return (
            self.weights is not WeightStrategy.RETAIN and self.process is not ProcessStrategy.STOP
        )

    @property
    def needs_checkpoint_section(self) -> bool:
        return self.process in (ProcessStrategy.CUDA_SUSPEND, ProcessStrategy.CHECKPOINT)

    def nonsense_reason(self) -> str | None:
        """Why this pair can never be useful, or None when it can."""
        if self.weights is WeightStrategy.RETAIN and self.process is ProcessStrategy.KEEP_RUNNING:
            return "retain+keep_running frees no GPU memory, so evicting would change nothing"
        return None

    @classmethod
    def parse(cls, text: str) -> EvictionConfig:
        """Parse the CLI form `WEIGHTS+PROCESS`, e.g. `discard+checkpoint`."""
        weights, sep, process = text.partition("+")
        if not sep:
            raise ValueError(f"eviction must look like WEIGHTS+PROCESS, got {text!r}")
        return cls(weights=WeightStrategy(weights), process=ProcessStrategy(process))


_WEIGHTS_DEPTH = {WeightStrategy.RETAIN: 0, WeightStrategy.OFFLOAD: 1, WeightStrategy.DISCARD: 2}
_PROCESS_DEPTH = {
    ProcessStrategy.KEEP_RUNNING: 0,
    ProcessStrategy.CUDA_SUSPEND: 1,
    ProcessStrategy.CHECKPOINT: 2,
    ProcessStrategy.STOP: 3,
}


def deeper(later: EvictionConfig, earlier: EvictionConfig) -> bool:
    """`later` frees at least as much as `earlier` on both axes, and more on one."""
    weights = _WEIGHTS_DEPTH[later.weights] - _WEIGHTS_DEPTH[earlier.weights]
    process = _PROCESS_DEPTH[later.process] - _PROCESS_DEPTH[earlier.process]
    return weights >= 0 and process >= 0 and (weights, process) != (0, 0)


class IdleStep(_Strict):
    """One rung of the idle ladder: after this long unused, leave with this eviction."""

    after_secs: float = Field(gt=0)
    eviction: EvictionConfig


DEFAULT_EVICTION = EvictionConfig(
    weights=WeightStrategy.OFFLOAD, process=ProcessStrategy.KEEP_RUNNING
)

#: `eviction: "auto"`: the level of each eviction is chosen per switch (policy/levels.py).
AUTO = "auto"
#: The tag of the WEIGHTS+PROCESS branch (dropped from error paths: the union is internal).
_LEVELS_TAG = "WEIGHTS+PROCESS"
_AUTO_TAG = '"auto"'
#: The tagged union's tags, which pydantic puts in error locations (never a config key).
DISCRIMINATOR_TAGS = frozenset({_LEVELS_TAG, _AUTO_TAG})
#: `{weights, process}` or `"auto"`; the discriminator reports only the branch meant, so
#: a misspelt key in `{weights, process}` reads as one error, not one per branch.
EvictionChoice = Annotated[
    Annotated[EvictionConfig, Tag(_LEVELS_TAG)] | Annotated[Literal["auto"], Tag(_AUTO_TAG)],
    Discriminator(lambda v: _AUTO_TAG if v == AUTO else _LEVELS_TAG),
]


#: Model fields a reload applies in place, without restarting the backend.
#: `adapters` is one: they are loaded through vLLM's runtime API, and the process's own
#: fact (`--enable-lora`, which turns on that API) is in `extra_args`.
RUNTIME_ONLY_FIELDS = frozenset(
    {"aliases", "max_concurrency", "ttl_secs", "idle", "pinned", "priority", "adapters"}
)

#: What a model serving `adapters` must pass vLLM (the runtime load API needs LoRA on).
LORA_FLAG = "--enable-lora"


class ModelConfig(_Strict):
    model_path: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535, strict=True)
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    gpus: list[int] | None = None
    eviction: EvictionChoice | None = Field(
        default=None,
        description='WEIGHTS+PROCESS, or "auto": each eviction picks its level from the '
        "learned costs, the host-RAM budget and the predicted time until reuse.",
    )
    checkpoint_path: str | None = None
    enable_sleep_mode: bool = True
    startup_timeout_secs: float = Field(default=600, gt=0)
    max_queue: int = Field(default=256, ge=1)
    max_num_seqs: int = Field(default=256, ge=1, description="Simulator batch size.")
    host_memory_gib: float | None = Field(
        default=None,
        ge=0,
        description="Host RAM this model pins while asleep at level 1 or suspended; "
        "unset: learned from the drop in available host memory across its last such eviction.",
    )
    #: TP>1 with cuda_suspend/checkpoint: start with NCCL_P2P_DISABLE=1/NCCL_SHM_DISABLE=1
    #: (those transports map memory cuda-checkpoint cannot move); values in `env` win.
    nccl_safe_env: bool = True
    ttl_secs: float | None = Field(
        default=None,
        ge=0,
        description="Evict with this model's eviction after this long with no queued or "
        "in-flight request (null: policy.ttl_secs; 0: never). Shorthand for a one-step `idle`.",
    )
    idle: list[IdleStep] | None = Field(
        default=None,
        description="The idle ladder: each step (after_secs, eviction) deeper and later than "
        "the last; after the first, a step can only stop the process.",
    )
    priority: int = Field(
        default=0,
        strict=True,
        description="Higher is served first among waiting models, as far as every lower "
        "one's max_wait_secs bound allows.",
    )
    pinned: bool = Field(
        default=False,
        description="Never chosen as a victim by any policy or idle TTL (an operator can "
        "still evict it with force); pins on a GPU must fit awake together.",
    )
    max_concurrency: int | None = Field(
        default=None,
        ge=1,
        strict=True,
        description="Requests in flight on this model at once (null = unlimited); more "
        "wait in its queue (still bounded by max_queue and request_timeout_secs).",
    )
    aliases: list[str] = Field(
        default_factory=list,
        description="Other names clients may request this model by (e.g. `gpt-4o-mini`); "
        "the proxy rewrites `model` to this model's name before forwarding, because the "
        "backend serves only that name. Listed in /v1/models with `alias_of`.",
    )
    adapters: dict[str, str] = Field(
        default_factory=dict,
        description="LoRA adapters served on this model: {name: path}. A request whose "
        "`model` is a name here goes to this model's backend unchanged; gpumux loads the "
        "adapter through vLLM's runtime API before the first such request of each backend "
        "process (and after a level-2 wake). Needs `--enable-lora` in extra_args (and "
        "`--max-lora-rank` at least the adapters' rank). Listed in /v1/models with `parent`.",
    )

    @cached_property  # the scheduler reads these on every request
    def tensor_parallel_size(self) -> int:
        value = _flag_value(self.extra_args, "--tensor-parallel-size", "-tp")
        return int(value) if value is not None else 1

    @cached_property  # the scheduler reads these on every request
    def gpu_memory_utilization(self) -> float:
        value = _flag_value(self.extra_args, "--gpu-memory-utilization")
        return float(value) if value is not None else 0.9

    @cached_property  # the scheduler reads these on every request
    def gpu_indices(self) -> tuple[int, ...]:
        if self.gpus is not None:
            return tuple(self.gpus)
        return tuple(range(self.tensor_parallel_size))

    def process_key(self) -> dict[str, object]:
        """The fields a backend process is started from: a reload that changes only the
        others (aliases and other front-door or scheduling facts) never restarts it."""
        return self.model_dump(exclude=set(RUNTIME_ONLY_FIELDS))

    def has_flag(self, flag: str) -> bool:
        return any(arg == flag or arg.startswith(flag + "=") for arg in self.extra_args)


def _flag_value(args: list[str], *flags: str) -> str | None:
    """The value of the last `--flag N` or `--flag=N` in args (vLLM's argparse keeps the last)."""
    found: str | None = None
    for i, arg in enumerate(args):
        for flag in flags:
            if arg == flag and i + 1 < len(args):
                found = args[i + 1]
            elif arg.startswith(flag + "="):
                found = arg.split("=", 1)[1]
    return found


class PolicyConfig(_Strict):
    policy_type: Literal["fifo", "cost_aware", "time_slice"] = "time_slice"
    request_timeout_secs: float = Field(default=300, gt=0)
    drain_before_switch: bool = True
    drain_timeout_secs: float = Field(default=60, ge=0)
    min_active_secs: float = Field(default=5, ge=0)
    coalesce_window_ms: float = Field(default=2000, ge=0)
    amortization_factor: float = Field(default=0.5, gt=0)
    max_wait_secs: float = Field(default=15, gt=0)
    tick_interval_ms: float = Field(default=500, gt=0)
    min_quantum_ms: float = Field(default=2000, ge=0)
    eviction: EvictionChoice = DEFAULT_EVICTION
    ttl_secs: float | None = Field(
        default=None, ge=0, description="The default idle TTL of every model (null/0: never)."
    )
    overlap: bool = Field(
        default=True,
        description=(
            "Start a wake as soon as the victims' GPU memory is free (after an eviction's"
            " first step), while the rest of their evictions finish in the background."
        ),
    )
    evict_ahead: bool = Field(
        default=True,
        description="Evict an idle model in the background when another model sharing its "
        "GPUs is predicted to be needed sooner and memory is short for it, so the next "
        "switch pays only the wake (never a model with queued or in-flight work).",
    )
    victims: Literal["cost", "lru"] = Field(
        default="cost",
        description="Who leaves the GPU for a wake, among the models placement lets go: "
        '"cost" (GreedyDual-Size-Frequency over learned costs, demand and size: '
        'docs/policies.md) or "lru" (least recently used: predictable, for measuring).',
    )
    demand_time_constant_secs: float = Field(
        default=300,
        gt=0,
        description="Time constant of each model's decayed arrival-rate estimate (victim "
        "choice, eviction ahead of need, auto eviction): shorter follows drift faster.",
    )
    standing_grants: int = Field(
        default=64,
        ge=0,
        description="Leases the scheduler grants ahead to each ready model with room and "
        "nothing queued, for its next requests to take without waiting on the scheduler "
        "task (withdrawn in the same step as any decision that changes the model; 0: "
        "every request asks).",
    )
    lease_sync_ms: float = Field(
        default=20,
        gt=0,
        description="Longest a standing grant taken, or a lease released while nothing waits "
        "on it, goes unseen by the scheduler when no other input wakes it (the status and "
        "the in-flight gauge lag by at most this).",
    )


class ObjectStoreConfig(_Strict):
    endpoint: str
    bucket: str
    region: str = "us-east-1"
    prefix: str = ""
    access_key: str | None = None
    secret_key: str | None = None
    # Bounds on every request (botocore's defaults are 60 s x retries) and on a whole
    # transfer; multipart chunks are uploaded `max_concurrency` at a time.
    connect_timeout_secs: float = Field(default=5, gt=0)
    read_timeout_secs: float = Field(default=30, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    max_concurrency: int = Field(default=4, ge=1)
    multipart_chunk_mib: float = Field(default=64, ge=5)  # S3's minimum part is 5 MiB
    transfer_timeout_secs: float = Field(default=1800, gt=0)
    # The NAME of an environment variable holding the HMAC key that signs manifests
    # (`s3_auth`): a restore runs the image's memory as root, so an image must prove it
    # was made by a key holder, not merely by someone who can write the bucket.
    manifest_key_env: str | None = None


class CheckpointConfig(_Strict):
    criu_path: str = "criu"
    cuda_plugin_dir: str | None = "/usr/lib/criu/"
    images_dir: str = "/var/lib/gpumux/images"
    cuda_checkpoint_path: str = "cuda-checkpoint"
    keep_images: bool = True
    object_store: ObjectStoreConfig | None = None
    # cuda_suspend: `auto` uses the driver API (cuda-bindings, in a helper) when usable,
    # else the CLI; a timeout bounds one call on one pid; `lock` waits at most the lock
    # timeout for GPU work; the end state of every pid is checked `attempts` times.
    cuda_checkpoint_api: Literal["auto", "driver", "cli"] = "auto"
    cuda_checkpoint_timeout_secs: float = Field(default=120, gt=0)
    cuda_lock_timeout_secs: float = Field(default=30, gt=0)
    cuda_verify_attempts: int = Field(default=5, ge=1)
    cuda_verify_interval_secs: float = Field(default=0.2, ge=0)
    # CRIU: bounds on one `criu dump` / `criu restore` run (the restored tree's /health
    # wait is bounded by the restore timeout too).
    dump_timeout_secs: float = Field(default=600, gt=0)
    restore_timeout_secs: float = Field(default=300, gt=0)

    @property
    def secret_env_names(self) -> list[str]:
        """Variables holding this section's secrets (the image signing key)."""
        name = self.object_store.manifest_key_env if self.object_store else None
        return [name] if name else []


class GpuConfig(_Strict):
    """Where GPU memory facts come from. `fake` reads the ledger mock backends book into."""

    probe: Literal["auto", "nvml", "fake", "none"] = "auto"
    fake_capacity_gib: list[float] = Field(default_factory=lambda: [80.0])
    fake_ledger_path: str | None = None
    sleeping_residual_gib: float = Field(default=1.0, ge=0)
    fake_host_memory_gib: float | None = Field(
        default=None,
        gt=0,
        description="Fake probe only: host RAM size; available = this minus what the ledger "
        "says level-1 sleepers and suspended models hold (makes host pressure testable).",
    )


class HostMemoryConfig(_Strict):
    """The host-RAM budget: level-1 sleepers and suspended models pin weights in host memory."""

    reserve_gib: float = Field(
        default=2.0,
        ge=0,
        description="Host RAM kept available. An eviction that would pin host memory below "
        "it first stops the oldest pinning sleepers, else evicts without pinning; a reading "
        "below it stops the oldest pinning sleeper. 0 turns the budget off.",
    )
    check_interval_secs: float = Field(
        default=2.0, gt=0, description="How often host (and GPU) memory is read."
    )


class SupervisionConfig(_Strict):
    """Named deadlines and restart limits for backends (every wait has one)."""

    stop_grace_secs: float = Field(default=10, gt=0)
    sleep_timeout_secs: float = Field(default=120, gt=0)
    wake_timeout_secs: float = Field(default=300, gt=0)
    warmup_timeout_secs: float = Field(default=120, gt=0)
    health_interval_secs: float = Field(default=5, gt=0)
    health_timeout_secs: float = Field(default=5, gt=0)
    health_failures_before_restart: int = Field(default=3, ge=1)
    passive_5xx_threshold: int = Field(
        default=5,
        ge=0,
        description=(
            "Consecutive 5xx responses from a backend (not gpumux's own errors) that make "
            "the health monitor confirm it with /health and a 1-token canary completion; "
            "only a failed confirmation restarts it. 0 disables."
        ),
    )
    adapter_load_timeout_secs: float = Field(
        default=120,
        gt=0,
        description="How long gpumux waits for vLLM to load a LoRA adapter (the request "
        "that needed it then fails with 502 adapter_load_failed).",
    )
    upstream_connect_timeout_secs: float = Field(default=5, gt=0)
    upstream_idle_timeout_secs: float = Field(default=600, gt=0)
    restart_backoff_secs: float = Field(default=1, ge=0)
    restart_backoff_max_secs: float = Field(default=60, ge=0)
    max_start_failures: int = Field(default=3, ge=1)
    failed_retry_secs: float = Field(default=60, gt=0)
    shutdown_timeout_secs: float = Field(default=30, gt=0)


class Config(_Strict):
    models: dict[str, ModelConfig] = Field(min_length=1)
    policy: PolicyConfig = PolicyConfig()
    port: int = Field(default=3000, ge=0, le=65535, strict=True)
    host: str = "0.0.0.0"
    metrics_port: int = Field(default=9090, ge=0, le=65535, strict=True)
    admin_port: int | None = Field(default=None, ge=0, le=65535, strict=True)
    admin_host: str = "127.0.0.1"
    #: HAProxy agent-check responder (docs/fleet.md); null = off. It answers without a
    #: token (HAProxy's protocol has none), so it binds loopback unless told otherwise.
    agent_port: int | None = Field(default=None, ge=1, le=65535, strict=True)
    agent_host: str = "127.0.0.1"
    vllm_command: str | list[str] = "vllm"
    checkpoint: CheckpointConfig | None = None
    warmup: bool = False
    preload: list[str] = Field(
        default_factory=list,
        description="Models (names or aliases) brought up at start, in order, as far as "
        "GPU memory allows without evicting anything (after `warmup`).",
    )
    api_keys_env: str | None = None
    admin_token_env: str | None = None
    max_request_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    header_timeout_secs: float = Field(
        default=15,
        gt=0,
        description="Every listener (proxy, admin, metrics): seconds a connection has to "
        "send a complete request line and headers, from when it opens and, when kept alive, "
        "from the first byte of each later request; then it is closed (slowloris guard). "
        "Bodies, queueing and responses are never timed by it.",
    )
    state_dir: str | None = None
    loading_feedback: Literal["off", "comments", "reasoning"] = Field(
        default="off",
        description="What a streaming request hears while it waits for its model: nothing, "
        "SSE comment lines, or chat chunks with delta.reasoning_content (chat UIs show them).",
    )
    loading_feedback_after_secs: float = Field(
        default=2,
        ge=0,
        description="Feedback starts only after a request has waited this long, so a short "
        "wait keeps the exact responses of `off`.",
    )
    request_log_size: int = Field(
        default=1000,
        ge=0,
        strict=True,
        description="Proxied requests kept for GET /api/requests (a ring; 0 keeps none). "
        "Never any prompt or completion text.",
    )
    gpu: GpuConfig = GpuConfig()
    supervision: SupervisionConfig = SupervisionConfig()
    host_memory: HostMemoryConfig = HostMemoryConfig()

    @property
    def vllm_argv(self) -> list[str]:
        if isinstance(self.vllm_command, str):
            return shlex.split(self.vllm_command)
        return list(self.vllm_command)

    @property
    def secret_env_names(self) -> list[str]:
        """Variables holding gpumux's own secrets: stripped from every child's environment."""
        own = [name for name in (self.api_keys_env, self.admin_token_env) if name]
        return own + (self.checkpoint.secret_env_names if self.checkpoint else [])

    # Not cached: `model_copy(update=...)` (a reload's merge) copies cached values along.
    @property
    def alias_targets(self) -> dict[str, str]:
        """Each alias → the model it names (the first claim wins; validation rejects more)."""
        targets: dict[str, str] = {}
        for name, model in self.models.items():
            for alias in model.aliases:
                targets.setdefault(alias, name)
        return targets

    @property
    def adapter_targets(self) -> dict[str, str]:
        """Each LoRA adapter name → the model that serves it (validation keeps names unique)."""
        targets: dict[str, str] = {}
        for name, model in self.models.items():
            for adapter in model.adapters:
                targets.setdefault(adapter, name)
        return targets

    def resolve_model(self, requested: str) -> str | None:
        """The configured model a request's `model` names (itself or by alias), or None."""
        if requested in self.models:
            return requested
        for name, model in self.models.items():
            if requested in model.aliases:
                return name
        return None

    def idle_ladder(self, alias: str) -> tuple[IdleStep, ...]:
        """The model's idle steps: its `idle`, else one step after its (or the policy's) TTL."""
        model = self.models[alias]
        if model.idle is not None:
            return tuple(model.idle)
        ttl = model.ttl_secs if model.ttl_secs is not None else self.policy.ttl_secs
        if not ttl:
            return ()
        return (IdleStep(after_secs=ttl, eviction=self.eviction_for(alias)),)

    def eviction_for(self, alias: str) -> EvictionConfig:
        """The model's own eviction, else the policy default (which must really apply).

        For `"auto"` this is the nominal level (offload+keep_running: labels, the wake
        plan of a model never evicted); each eviction's real level is chosen then."""
        chosen = self.models[alias].eviction or self.policy.eviction
        return chosen if isinstance(chosen, EvictionConfig) else DEFAULT_EVICTION

    def eviction_is_auto(self, alias: str) -> bool:
        """The model's (or the policy default's) eviction is `"auto"`."""
        return (self.models[alias].eviction or self.policy.eviction) == AUTO


def json_schema() -> dict[str, object]:
    return Config.model_json_schema()
