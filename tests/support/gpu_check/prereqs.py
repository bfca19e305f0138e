"""What the GPU check needs, what this machine lacks, and installing it from wheels offline.

Owns: the list of Python distributions the check imports (gpumux's own dependencies, the
test runner's, torch and cuda-bindings), finding the missing or too-old ones, unpacking
wheels from an operator-given directory into a private folder (never the machine's
environment, never the network: a wheel is a zip file), the import smoke test in a
fresh interpreter, and the tools found on PATH (criu, its CUDA plugin, cuda-checkpoint).
Does not: download anything (`scripts/gpu-wheels` does, on a machine with a network).
Stdlib only: it runs before anything it checks is importable.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import platform
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

#: distribution -> minimum version (gpumux's pyproject, and what its pins pull in).
REQUIRED: dict[str, str] = {
    "aiohttp": "3.13", "aiohappyeyeballs": "2.5", "aiosignal": "1.4", "attrs": "17.3",
    "frozenlist": "1.1.1", "multidict": "4.5", "propcache": "0.2", "yarl": "1.17",
    "pydantic": "2.10", "pydantic-core": "2", "annotated-types": "0.6",
    "typing-inspection": "0.4.4", "typing-extensions": "4.16", "anyio": "4.6", "idna": "2.8",
    "psutil": "6", "structlog": "24.4", "prometheus-client": "0.21", "nvidia-ml-py": "12.560",
    "boto3": "1.35", "botocore": "1.35", "s3transfer": "0.10", "jmespath": "0.7",
    "python-dateutil": "2.1", "six": "1.5", "urllib3": "1.25.4",
    "pytest": "8.3", "pytest-asyncio": "1.0", "pytest-timeout": "2.3", "pluggy": "1.5",
    "iniconfig": "2", "packaging": "24", "pygments": "2.15",
}  # fmt: skip
#: Needed, but never from a wheel directory (gigabytes, and must match the driver).
GPU_STACK = {"torch": "2.4", "cuda-bindings": "12.8"}
#: Entry points only (gpumux's inner modules move; the distributions above cover the rest).
SMOKE_IMPORTS = (
    "gpumux.cli.main", "mock_vllm.server", "pytest", "pytest_asyncio", "pytest_timeout", "pynvml",
)  # fmt: skip
CUDA_PLUGIN = "cuda_plugin.so"


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text.split("+")[0])[:4])


def installed(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def lacking(required: dict[str, str]) -> dict[str, str]:
    """dist -> why ("missing" or "1.2 < 1.5") for each that is absent or too old."""
    out: dict[str, str] = {}
    for dist, minimum in required.items():
        have = installed(dist)
        if have is None:
            out[dist] = "missing"
        elif version_tuple(have) < version_tuple(minimum):
            out[dist] = f"{have} < {minimum}"
    return out


@dataclass(frozen=True)
class Wheel:
    path: Path
    dist: str
    version: str


def _compatible(tags: list[str]) -> bool:
    py, abi, plat = tags
    here = f"cp{sys.version_info.major}{sys.version_info.minor}"
    pys = set(py.split("."))
    minor = sys.version_info.minor
    py_ok = bool(pys & {"py3", f"py{here[2:]}", here}) or (
        abi == "abi3" and any(re.fullmatch(r"cp3(\d+)", p) and int(p[3:]) <= minor for p in pys)
    )
    abi_ok = abi in ("none", "abi3", here)
    machine = platform.machine()
    plat_ok = plat == "any" or any(p.endswith(machine) and "linux" in p for p in plat.split("."))
    return py_ok and abi_ok and plat_ok


def wheels_in(directory: Path) -> dict[str, Wheel]:
    """The newest wheel this interpreter can use, per distribution, in ``directory``."""
    best: dict[str, Wheel] = {}
    for path in sorted(directory.glob("*.whl")):
        parts = path.name[: -len(".whl")].split("-")
        if len(parts) < 5 or not _compatible(parts[-3:]):
            continue
        wheel = Wheel(path, norm(parts[0]), parts[1])
        old = best.get(wheel.dist)
        if old is None or version_tuple(wheel.version) > version_tuple(old.version):
            best[wheel.dist] = wheel
    return best


@dataclass
class Setup:
    """What the prerequisite step found and did, for the report."""

    lacking: dict[str, str] = field(default_factory=dict)
    installed: dict[str, str] = field(default_factory=dict)
    still_lacking: dict[str, str] = field(default_factory=dict)
    gpu_stack: dict[str, str] = field(default_factory=dict)
    smoke_error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.still_lacking and self.smoke_error is None


def install(wheels: Path | None, target: Path) -> Setup:
    """Unpack wheels for what is lacking into ``target`` and put it first on sys.path."""
    setup = Setup(lacking=lacking(REQUIRED))
    if wheels is not None and setup.lacking:
        found = wheels_in(wheels)
        target.mkdir(parents=True, exist_ok=True)
        for dist in setup.lacking:
            wheel = found.get(norm(dist))
            if wheel is None:
                continue
            with zipfile.ZipFile(wheel.path) as archive:
                archive.extractall(target)
            setup.installed[dist] = wheel.version
    if target.is_dir():
        sys.path.insert(0, str(target))
        importlib.invalidate_caches()
    setup.still_lacking = lacking(REQUIRED)
    setup.gpu_stack = {d: installed(d) or "missing" for d in GPU_STACK}
    return setup


def smoke(env: dict[str, str]) -> str | None:
    """Import what the check runs, in a fresh interpreter; the error text, or None."""
    code = "import " + ", ".join(SMOKE_IMPORTS)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1]


def tools() -> dict[str, str | None]:
    """Paths (or None) of the programs the optional rows need."""
    cli = os.environ.get("GPUMUX_CUDA_CHECKPOINT") or shutil.which("cuda-checkpoint")
    criu = shutil.which("criu") or (
        "/usr/local/sbin/criu" if os.path.exists("/usr/local/sbin/criu") else None
    )
    plugin_dir = os.environ.get("GPUMUX_CRIU_PLUGIN_DIR", "/usr/lib/criu/")
    plugin = os.path.join(plugin_dir, CUDA_PLUGIN)
    return {
        "cuda-checkpoint": cli,
        "criu": criu,
        "criu_cuda_plugin": plugin if os.path.exists(plugin) else None,
    }


def criu_version(criu: str) -> str | None:
    try:
        out = subprocess.run([criu, "--version"], capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    match = re.search(r"Version:\s*([\d.]+)", out.stdout)
    return match.group(1) if match else None
