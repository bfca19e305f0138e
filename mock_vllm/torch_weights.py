"""The weight bytes of a ``--mock-gpu torch`` backend: seeded pattern, checksum, file I/O.

Owns: filling a flat int64 tensor with a pattern derived from its seed (chunk by chunk,
so temporaries stay small), the checksum computed on the tensor's own device (so a bad
restore, a skipped reload or a torn file read shows), and writing/reading the tensor
to/from a plain file through a pageable host buffer (what a safetensors load costs).
Does not: decide when any of this happens (``torch_gpu``) or import torch itself: the
caller passes the module, so this file imports without it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

MIB = 1 << 20
#: Device-side chunk for pattern and checksum temporaries (two of these at most).
CHUNK_BYTES = 64 * MIB
#: Host buffer for file reads and writes.
IO_CHUNK_BYTES = 256 * MIB
ELEMENT = 8  # int64
_MIX = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed 64-bit integer
_MASK = (1 << 64) - 1


def _chunks(total_elems: int, chunk_bytes: int) -> list[tuple[int, int]]:
    step = max(chunk_bytes // ELEMENT, 1)
    return [(start, min(start + step, total_elems)) for start in range(0, total_elems, step)]


def fill_pattern(torch: Any, weights: Any, seed: int) -> None:
    """weights[i] = mix(i * golden + seed): different per element, per seed, per model."""
    for start, end in _chunks(weights.numel(), CHUNK_BYTES):
        part = weights[start:end]
        part.copy_(torch.arange(start, end, dtype=torch.int64, device=weights.device))
        part.mul_(_MIX).add_(seed)
        part.bitwise_xor_(part >> 29)


def checksum(torch: Any, weights: Any) -> str:
    """16 hex digits over every element, position-sensitive at chunk granularity."""
    sums = [
        (part ^ (part >> 17)).sum()
        for part in (weights[a:b] for a, b in _chunks(weights.numel(), CHUNK_BYTES))
    ]
    digest = 0
    for value in torch.stack(sums).tolist() if sums else []:
        digest = (digest * 1_000_003 + (int(value) & _MASK)) & _MASK
    return f"{digest:016x}"


def write_file(torch: Any, weights: Any, path: Path) -> None:
    """Write the raw bytes, atomically (a crash never leaves a short file behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = weights.view(torch.uint8)
    buf = bytearray(min(IO_CHUNK_BYTES, flat.numel()))
    host = torch.frombuffer(buf, dtype=torch.uint8)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as out:
        for start in range(0, flat.numel(), len(buf)):
            n = min(len(buf), flat.numel() - start)
            host[:n].copy_(flat[start : start + n])
            out.write(memoryview(buf)[:n])
    os.replace(tmp, path)


def read_file(torch: Any, weights: Any, path: Path) -> bool:
    """Fill ``weights`` from ``path``; False (nothing read) when it is absent or mis-sized."""
    flat = weights.view(torch.uint8)
    try:
        if path.stat().st_size != flat.numel():
            return False
        source = open(path, "rb")  # noqa: SIM115 - closed below, after the size check
    except OSError:
        return False
    buf = bytearray(min(IO_CHUNK_BYTES, flat.numel()))
    host = torch.frombuffer(buf, dtype=torch.uint8)
    view = memoryview(buf)
    with source:
        for start in range(0, flat.numel(), len(buf)):
            n = min(len(buf), flat.numel() - start)
            got = 0
            while got < n:
                read = source.readinto(view[got:n])
                if not read:
                    raise OSError(f"{path}: file ended at byte {start + got}")
                got += read
            flat[start : start + n].copy_(host[:n])
    return True
