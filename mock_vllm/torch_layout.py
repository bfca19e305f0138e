"""How a ``--mock-gpu torch`` backend lays out its memory: pure arithmetic, no torch.

Owns: the byte budget (``--gpu-memory-utilization`` x the card's total, less the CUDA
context allowance ``--mock-residual-gib``, as vLLM keeps its whole process under that
share), its split into weights (``--mock-model-gib``) and KV cache (the rest, less a
scratch reserve for the checksum and the pattern fill), the pattern seed, and the name
of the weights file that level-2 reloads and cold starts read.
Does not: allocate anything (``torch_gpu``) or read the card (the caller passes its total).
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mock_vllm.options import GIB, ServeOptions

MIB = 1 << 20
#: Device bytes kept free for temporaries (pattern fill, checksum chunks).
SCRATCH_BYTES = 256 * MIB
#: Tensor sizes are whole multiples of this (and so of the 8-byte weight element).
ALIGN = 2 * MIB


class LayoutError(Exception):
    """The asked-for sizes cannot fit; ``str()`` says which and by how much."""


@dataclass(frozen=True)
class Layout:
    weights_bytes: int
    kv_bytes: int
    seed: int
    weights_path: Path

    @property
    def device_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes


def default_seed(name: str) -> int:
    """A stable, non-negative 63-bit seed per served model name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1


def default_weights_dir() -> Path:
    return Path(tempfile.gettempdir()) / "mock-vllm-weights"


def weights_path(directory: Path, model: str, seed: int, nbytes: int) -> Path:
    """One file per (model, seed, size): a restarted backend finds its own weights."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model).strip("._") or "model"
    return directory / f"{safe}-{seed:016x}-{nbytes}.bin"


def _align_down(nbytes: int) -> int:
    return nbytes - nbytes % ALIGN


def plan(opts: ServeOptions, total_bytes: int) -> Layout:
    """The layout for ``opts`` on a card of ``total_bytes``; LayoutError if it cannot fit."""
    share = int(opts.gpu_memory_utilization * total_bytes)
    budget = share - int(opts.residual_gib * GIB) - SCRATCH_BYTES
    weights = _align_down(int(opts.model_gib * GIB)) or ALIGN
    if weights > budget:
        raise LayoutError(
            f"ValueError: model weights take {weights / GIB:.2f} GiB but "
            f"--gpu-memory-utilization {opts.gpu_memory_utilization} of {total_bytes / GIB:.2f} "
            f"GiB leaves {max(budget, 0) / GIB:.2f} GiB after the CUDA context "
            f"({opts.residual_gib} GiB) and scratch. Raise the utilization or lower "
            "--mock-model-gib."
        )
    seed = default_seed(opts.model_id) if opts.seed is None else opts.seed
    directory = Path(opts.weights_dir) if opts.weights_dir else default_weights_dir()
    return Layout(
        weights_bytes=weights,
        kv_bytes=_align_down(budget - weights),
        seed=seed,
        weights_path=weights_path(directory, opts.model_id, seed, weights),
    )
