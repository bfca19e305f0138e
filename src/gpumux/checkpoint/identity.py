"""What a CRIU image must match to be restored here: the model's launch and the host.

Owns: `ModelIdentity` (what the config says a model's tree is: alias, model_path, tensor
parallelism, port, and a digest of the rest of its launch), `HostIdentity` (kernel
release, CRIU version, NVIDIA driver), and `mismatches`, which names every field a
manifest recorded that differs from here.
Does not: read manifests, run CRIU, or decide what happens to an image that does not
match (`checkpoints` does).

Why each field: a restore brings back the *process* that was dumped, whatever the config
says now. An image of another model, model_path or TP degree would answer with the wrong
weights or shape; one bound to another port would never answer on the configured one;
changed `extra_args`, `env`, GPUs or `vllm_command` would be silently ignored (hence the
launch digest: a hash, because `extra_args` and `env` may hold secrets and manifests go
to the object store). CUDA state only restores under the same driver, and CRIU images
are tied to the kernel and CRIU that made them (vLLM's own snapshotter checks the same).
A field an older manifest did not record is not compared.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from gpumux.checkpoint.images import Manifest
from gpumux.core.config import Config


@dataclass(frozen=True)
class ModelIdentity:
    model: str
    model_path: str
    tp: int
    port: int
    launch: str  # sha256 of everything else in the config that shapes the process

    @classmethod
    def of(cls, config: Config, alias: str) -> ModelIdentity:
        model = config.models[alias]
        launch = {
            # As configured, not as resolved on PATH: the daemon and a pre-bake run from
            # different shells must agree.
            "vllm_command": config.vllm_argv,
            "model_path": model.model_path,
            "extra_args": model.extra_args,
            "env": model.env,
            "gpus": list(model.gpu_indices),
            "enable_sleep_mode": model.enable_sleep_mode,
            "nccl_safe_env": model.nccl_safe_env,
        }
        text = json.dumps(launch, sort_keys=True, separators=(",", ":"))
        return cls(
            model=alias,
            model_path=model.model_path,
            tp=model.tensor_parallel_size,
            port=model.port,
            launch=hashlib.sha256(text.encode()).hexdigest(),
        )


@dataclass(frozen=True)
class HostIdentity:
    kernel: str
    criu_version: str
    driver_version: str | None


def mismatches(manifest: Manifest, model: ModelIdentity, host: HostIdentity) -> list[str]:
    """`field: image has X, here Y` for every recorded field that differs (empty: a match)."""
    pairs: list[tuple[str, object, object]] = [
        ("model", manifest.model, model.model),
        ("tp", manifest.tp, model.tp),
        ("port", manifest.port, model.port),
        ("kernel", manifest.kernel, host.kernel),
        ("criu_version", manifest.criu_version, host.criu_version),
        ("driver_version", manifest.driver_version, host.driver_version),
    ]
    if manifest.model_path is not None:  # recorded since this check exists
        pairs.insert(1, ("model_path", manifest.model_path, model.model_path))
    found = [
        f"{name}: image has {recorded!r}, here {current!r}"
        for name, recorded, current in pairs
        if recorded != current
    ]
    if manifest.launch is not None and manifest.launch != model.launch:
        found.append("launch: vllm_command, extra_args, env, gpus or sleep mode changed")
    return found
