"""Cost profiles: what each switch step costs on a machine, per byte and per model.

Owns: the profile schema (`CostProfile`, version 1: per-byte rates for pinning, pinned
copies, file reads from the page cache and from disk, cuda-checkpoint suspend and resume,
CRIU dump and restore; fixed costs for a stop, a process start, an HTTP call and the
warm-up; optional per-model sizes and measured seconds), the built-in profiles (`h200-vm`:
the H200 measurements of design §8 and `bench/results/gpu-check-h200.md`), and finding a
profile by name or JSON file with a clear error for a bad one.
Does not: charge anything (`simulate.profile_costs` turns a profile plus a config into
step durations) or measure anything. Pure apart from reading the file it is given.

Every field has the `h200-vm` value as its default, so a JSON profile states only what
differs from that machine (a per-model `seconds` table exported from a daemon, say).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gpumux.core.config import EvictionConfig

#: The learned-cost operations a profile may carry measured seconds for (policy.costs).
MEASURED_OPS = ("evict", "wake", "cold_start")


class ProfileError(ValueError):
    """A profile name that is not built in, or a file that is not a valid profile."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelCosts(_Strict):
    """What one model (by alias) weighs and, if measured, what its operations took."""

    weights_gib: float | None = Field(
        default=None, gt=0, description="Weight bytes (default: --mock-model-gib, else a share)"
    )
    footprint_gib: float | None = Field(
        default=None, gt=0, description="GPU bytes the process holds (default: util x card)"
    )
    seconds: dict[str, float] = Field(
        default_factory=dict,
        description='Measured seconds per "op|weights+process" (op: evict, wake, cold_start); '
        "an operation with an entry takes exactly that long, spread over its steps.",
    )

    @field_validator("seconds")
    @classmethod
    def _known_keys(cls, seconds: dict[str, float]) -> dict[str, float]:
        for key, secs in seconds.items():
            op, _, strategy = key.partition("|")
            if op not in MEASURED_OPS:
                raise ValueError(f"{key!r}: the operation must be one of {', '.join(MEASURED_OPS)}")
            try:
                EvictionConfig.parse(strategy)
            except ValueError as exc:
                raise ValueError(f"{key!r}: {exc}") from None
            if not secs >= 0:  # also refuses NaN
                raise ValueError(f"{key!r}: seconds must be non-negative, got {secs}")
        return seconds


class CostProfile(_Strict):
    """Per-byte rates (GB/s, 10^9 bytes) and fixed seconds. Defaults: `h200-vm`."""

    version: Literal[1] = 1
    name: str = "custom"
    description: str = ""
    # Level-1 sleep: torch allocates the pinned backup once per process (vLLM empties
    # torch's host cache only at shutdown), so only a process's first sleep pays this.
    pin_gbps: float = Field(default=2.5, gt=0)
    pinned_copy_gbps: float = Field(default=55.0, gt=0)
    # Level-2 reload and a cold start read the weights' files.
    page_cache_read_gbps: float = Field(default=6.0, gt=0)
    disk_read_gbps: float = Field(default=1.6, gt=0)
    page_cache_gib: float = Field(default=64.0, ge=0)
    cuda_suspend_gbps: float = Field(default=2.2, gt=0)
    cuda_resume_gbps: float = Field(default=6.5, gt=0)
    criu_dump_gbps: float = Field(default=0.74, gt=0)
    criu_dump_fixed_secs: float = Field(default=5.9, ge=0)
    criu_restore_gbps: float = Field(default=0.67, gt=0)
    criu_restore_fixed_secs: float = Field(default=4.7, ge=0)
    criu_process_image_gib: float = Field(default=2.9, ge=0)
    process_start_secs: float = Field(default=30.0, ge=0)
    stop_secs: float = Field(default=0.4, ge=0)
    call_secs: float = Field(default=0.02, ge=0)
    warmup_secs: float = Field(default=0.5, ge=0)
    weights_share: float = Field(default=0.75, gt=0, le=1)
    models: dict[str, ModelCosts] = Field(default_factory=dict)


H200_VM = CostProfile(
    name="h200-vm",
    description=(
        "One H200 in a VM (128 GiB RAM), measured through the daemon and a probe (design "
        "section 8, bench/results/gpu-check-h200.md): fresh pinned allocation 2.0-2.7 GB/s "
        "(2.5) on a process's first level-1 sleep, pinned copies 54-55 GB/s, reload_weights "
        "4.5-7.7 GB/s from the page cache (6.0) and 1.4-1.9 GB/s from disk (1.6), "
        "cuda-checkpoint suspend 2.0-2.4 GB/s (2.2) and resume 6.5 GB/s, stop 0.4 s. Not "
        "measured there: CRIU (fitted to llmux's Llama-8B dumps and restores on an RTX 4090: "
        "5.9 s + image / 0.74 GB/s, 4.7 s + image / 0.67 GB/s, 2.9 GiB of process image) and "
        "a real vLLM's start-up before it reads weights (30 s, from published vLLM cold "
        "starts; the H200 run used the torch mock, which starts in 2-3 s)."
    ),
)

BUILTIN: dict[str, CostProfile] = {H200_VM.name: H200_VM}


def load_profile(name_or_path: str) -> CostProfile:
    """A built-in profile by name, else the profile in that JSON file."""
    if name_or_path in BUILTIN:
        return BUILTIN[name_or_path]
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        known = ", ".join(sorted(BUILTIN))
        raise ProfileError(f"{name_or_path!r} is neither a built-in profile ({known}) nor a file")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ProfileError(f"{path}: not valid JSON ({exc})") from None
    return parse_profile(raw, str(path))


def parse_profile(raw: object, where: str = "profile") -> CostProfile:
    try:
        return CostProfile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or '(top)'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ProfileError(f"{where}: not a cost profile: {problems}") from None


def profile_json(profile: CostProfile) -> str:
    """The profile as a JSON document `load_profile` reads back."""
    return json.dumps(profile.model_dump(mode="json"), indent=2, sort_keys=True)
