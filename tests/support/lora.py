"""LoRA adapters for tests: adapter directories, a recording fake of vLLM's load API, and
the mock backend's load counts.

Owns: `adapter_dir` (a PEFT-shaped directory whose `adapter_config.json` is all that
`mock_vllm` and gpumux's config check read), `RecordingAdapterApi` (an `AdapterApi` that
records each call, can hold a load open until released and can fail the next loads with
a given status and message), and `lora_counts` (a mock backend's `/mock/lora`).
Does not: write real weights itself: `tiny_adapter` runs `scripts/make_tiny_lora.py` (the
real vLLM tier's adapter).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpumux.backends.adapters import AdapterApiError
from tests.support.client import get_json
from tests.support.daemon import RunningDaemon


def adapter_dir(root: Path, name: str, rank: int = 8) -> Path:
    """A directory with a PEFT `adapter_config.json` of rank `rank`."""
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": ["q_proj"]}
    (directory / "adapter_config.json").write_text(json.dumps(config))
    return directory


def lora_counts(daemon: RunningDaemon, model: str) -> dict[str, Any]:
    """The mock backend's `/mock/lora`: `served` (name → path), `loads`, `unloads`."""
    counts: dict[str, Any] = get_json(daemon.backend_url(model) + "/mock/lora")
    return counts


@dataclass(frozen=True)
class Call:
    op: str  # "load" or "unload"
    model: str
    port: int
    name: str
    path: str | None = None
    inplace: bool = False


@dataclass
class RecordingAdapterApi:
    """An `AdapterApi` that records calls; `hold()` keeps loads open until `release()`."""

    calls: list[Call] = field(default_factory=list)
    failures: list[AdapterApiError] = field(default_factory=list)  # raised by the next loads
    _gate: asyncio.Event | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)

    def hold(self) -> None:
        self._gate = asyncio.Event()

    def release(self) -> None:
        if self._gate is not None:
            self._gate.set()

    def fail_next(self, status: int | None, message: str) -> None:
        self.failures.append(AdapterApiError(status, message))

    def loads(self) -> list[Call]:
        return [c for c in self.calls if c.op == "load"]

    async def load(
        self, model: str, port: int, name: str, path: str, *, inplace: bool, timeout: float
    ) -> None:
        self.calls.append(Call("load", model, port, name, path, inplace))
        self.started.set()
        if self._gate is not None:
            await self._gate.wait()
        if self.failures:
            raise self.failures.pop(0)

    async def unload(self, model: str, port: int, name: str, *, timeout: float) -> None:
        self.calls.append(Call("unload", model, port, name))


def tiny_adapter(python: Path, model_dir: Path, out: Path, *, seed: int = 0, rank: int = 8) -> Path:
    """A real, seeded PEFT adapter for a `make_tiny_model.py` model, written by
    `scripts/make_tiny_lora.py` with `python` (the vLLM environment's: it has torch)."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "make_tiny_lora.py"
    argv = [str(python), str(script), str(model_dir), str(out), f"--seed={seed}", f"--rank={rank}"]
    subprocess.run(argv, check=True, capture_output=True, timeout=300)
    assert (out / "adapter_config.json").is_file()
    assert (out / "adapter_model.safetensors").is_file()
    return out
