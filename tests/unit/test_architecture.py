"""The architecture rules of design §2, checked on the source tree as it is on disk.

Modules are discovered at collection time, so files added later are held to the same
rules: every module documents itself, imports flow one way (pure core → adapters →
coordination → edges), modules stay small, and tests use fakes rather than mocks.
"""

from __future__ import annotations

import ast
import statistics
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import cached_property
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = {"gpumux": ROOT / "src" / "gpumux", "mock_vllm": ROOT / "mock_vllm"}
TESTS_DIR = ROOT / "tests"

#: The layers, bottom first (design §2, docs/architecture.md). A module belongs to the
#: first unit whose patterns match its dotted name; it may import its own unit and units
#: of a strictly lower rank, never one of its rank or above, so imports flow one way.
UNITS: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("core", 0, ("gpumux.core", "gpumux.core.*")),
    ("policy", 1, ("gpumux.policy", "gpumux.policy.*")),
    (
        "scheduler-state",
        2,
        (
            "gpumux.scheduler.state",
            "gpumux.scheduler.state.*",
            "gpumux.scheduler.messages",
            "gpumux.scheduler.inputs",
            "gpumux.scheduler.view",
        ),
    ),
    ("procs", 3, ("gpumux.procs", "gpumux.procs.*")),
    ("gpu", 3, ("gpumux.gpu", "gpumux.gpu.*")),
    ("cuda", 4, ("gpumux.cuda", "gpumux.cuda.*")),
    ("checkpoint", 4, ("gpumux.checkpoint", "gpumux.checkpoint.*")),
    ("backends", 5, ("gpumux.backends", "gpumux.backends.*")),
    ("scheduler", 6, ("gpumux.scheduler", "gpumux.scheduler.*")),
    ("telemetry", 7, ("gpumux.telemetry", "gpumux.telemetry.*")),
    ("http", 8, ("gpumux.http", "gpumux.http.*")),
    ("admin", 9, ("gpumux.admin", "gpumux.admin.*")),
    ("fleet", 10, ("gpumux.fleet", "gpumux.fleet.*")),
    ("daemon", 11, ("gpumux.daemon", "gpumux.daemon.*")),
    ("simulate", 12, ("gpumux.simulate", "gpumux.simulate.*")),
    ("cli", 13, ("gpumux.cli", "gpumux.cli.*")),
    ("entry", 14, ("gpumux", "gpumux.__main__")),
)
#: Units with no I/O, no clock and no logging (design §2): the pure core.
PURE_UNITS = frozenset({"core", "policy", "scheduler-state"})
#: Units that talk to the world but never to coordination or edges.
ADAPTER_UNITS = frozenset({"procs", "gpu", "cuda", "checkpoint", "backends"})
#: What a pure module may not import: I/O, clocks, processes, logging, the network.
PURE_FORBIDDEN_TOP_LEVEL = frozenset(
    {
        "aiohttp",
        "anyio",
        "boto3",
        "botocore",
        "pynvml",
        "psutil",
        "structlog",
        "time",
        "datetime",
        "asyncio",
        "subprocess",
        "os",
        "logging",
        "socket",
        "signal",
        "threading",
        "shutil",
        "prometheus_client",
    }
)
#: The modules allowed at the top of the package, outside every layer folder.
TOP_LEVEL_MODULES = frozenset({"gpumux", "gpumux.__main__"})


def unit_of(name: str) -> tuple[str, int] | None:
    """(unit, rank) of a gpumux module name, or None for names outside gpumux."""
    for unit, rank, patterns in UNITS:
        if matches(name, patterns):
            return unit, rank
    return None


MEDIAN_LINES_LIMIT = 130
LONG_MODULE_LINES = 400
MOCK_BOUNDARY_MARK = "# mock-boundary:"


def matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


@dataclass(frozen=True)
class Module:
    """One source file and the dotted name it is imported under."""

    name: str
    path: Path
    is_package: bool
    known: frozenset[str] = field(compare=False, repr=False)

    @cached_property
    def source(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @cached_property
    def tree(self) -> ast.Module:
        return ast.parse(self.source, filename=str(self.path))

    @cached_property
    def lines(self) -> int:
        return len(self.source.splitlines())

    def imports(self) -> list[tuple[str, int]]:
        """(dotted name, line) of everything imported, relative imports resolved.

        `from pkg import name` also yields `pkg.name` when that is a module of ours, so
        `from gpumux import scheduler` counts as importing `gpumux.scheduler.runner`.
        """
        found: list[tuple[str, int]] = []
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                found += [(alias.name, node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = self._resolve(node)
                found.append((base, node.lineno))
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    if candidate in self.known:
                        found.append((candidate, node.lineno))
        return found

    def absolute_top_levels(self) -> list[tuple[str, int]]:
        """Top-level package of every absolute import (the third-party/stdlib view)."""
        found: list[tuple[str, int]] = []
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                found += [(alias.name.split(".")[0], node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((node.module.split(".")[0], node.lineno))
        return found

    def _resolve(self, node: ast.ImportFrom) -> str:
        if node.level == 0:
            return node.module or ""
        parts = self.name.split(".")
        if not self.is_package:
            parts = parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        if node.module:
            parts.append(node.module)
        return ".".join(parts)


def discover() -> list[Module]:
    entries: list[tuple[str, Path, bool]] = []
    for package, directory in PACKAGE_DIRS.items():
        for path in sorted(directory.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = [package, *path.relative_to(directory).with_suffix("").parts]
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            entries.append((".".join(parts), path, is_package))
    known = frozenset(name for name, _, _ in entries)
    return [Module(name, path, is_package, known) for name, path, is_package in entries]


MODULES = discover()
BY_NAME = {m.name: m for m in MODULES}
GPUMUX_MODULES = [m for m in MODULES if m.name == "gpumux" or m.name.startswith("gpumux.")]
PURE_MODULES = [m for m in GPUMUX_MODULES if (unit_of(m.name) or ("", 0))[0] in PURE_UNITS]
ADAPTER_MODULES = [m for m in GPUMUX_MODULES if (unit_of(m.name) or ("", 0))[0] in ADAPTER_UNITS]
TEST_FILES = sorted(p for p in TESTS_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def ids(modules: list[Module]) -> list[str]:
    return [m.name for m in modules]


def test_discovery_finds_the_contract_modules() -> None:
    """The walk sees the lead's core modules, so an empty parametrization cannot pass silently."""
    for name in (
        "gpumux.core.config",
        "gpumux.core.errors",
        "gpumux.core.states",
        "gpumux.core.eviction",
    ):
        assert name in BY_NAME, name
        assert BY_NAME[name] in PURE_MODULES
    assert TEST_FILES


# --- (a) docstrings ----------------------------------------------------------------------


@pytest.mark.parametrize("module", MODULES, ids=ids(MODULES))
def test_module_has_a_docstring(module: Module) -> None:
    """Every module opens with a docstring saying what it owns."""
    docstring = ast.get_docstring(module.tree) or ""
    assert docstring.strip(), f"{module.path.relative_to(ROOT)} has no docstring"


# --- (b) import layering -----------------------------------------------------------------


@pytest.mark.parametrize("module", PURE_MODULES, ids=ids(PURE_MODULES))
def test_pure_module_imports_no_io_clock_or_logging(module: Module) -> None:
    """The pure core imports nothing that does I/O, reads a clock, spawns or logs."""
    bad = [
        f"line {line}: {name}"
        for name, line in module.absolute_top_levels()
        if name in PURE_FORBIDDEN_TOP_LEVEL
    ]
    assert not bad, f"{module.name} is pure but imports: {', '.join(bad)}"


def gpumux_imports(module: Module) -> list[tuple[str, int]]:
    """The gpumux modules (not the bare package) that `module` imports."""
    return [(name, line) for name, line in module.imports() if name.startswith("gpumux.")]


@pytest.mark.parametrize("module", GPUMUX_MODULES, ids=ids(GPUMUX_MODULES))
def test_module_lives_in_a_layer_folder(module: Module) -> None:
    """Every module sits in a layer folder; only the package and `__main__` stay on top."""
    assert unit_of(module.name) is not None, f"{module.name} is in no layer (see UNITS)"
    if module.name.count(".") == 1 and not module.is_package:
        assert module.name in TOP_LEVEL_MODULES, (
            f"{module.name} sits at the top of the package; move it into its layer's folder"
        )


@pytest.mark.parametrize("module", GPUMUX_MODULES, ids=ids(GPUMUX_MODULES))
def test_imports_flow_one_way_between_layers(module: Module) -> None:
    """A module imports its own unit and units of lower rank only (pure → adapters → …)."""
    own = unit_of(module.name)
    assert own is not None
    bad = []
    for name, line in gpumux_imports(module):
        target = unit_of(name)
        if target is None or (target[0] != own[0] and target[1] >= own[1]):
            bad.append(f"line {line}: {name} ({target[0] if target else '?'})")
    assert not bad, f"{module.name} ({own[0]}, rank {own[1]}) imports upward: {', '.join(bad)}"


def test_pure_units_are_the_lowest() -> None:
    """Nothing pure may sit above an impure unit, so a pure module can never reach I/O."""
    ranks = {unit: rank for unit, rank, _ in UNITS}
    assert max(ranks[u] for u in PURE_UNITS) < min(
        rank for unit, rank in ranks.items() if unit not in PURE_UNITS
    )


def function_level_imports(module: Module) -> list[tuple[str, int]]:
    """gpumux imports written inside a function or method (hidden cycles hide there)."""
    found: list[tuple[str, int]] = []
    for function in ast.walk(module.tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Import):
                found += [(a.name, node.lineno) for a in node.names if a.name.startswith("gpumux")]
            elif isinstance(node, ast.ImportFrom) and (
                node.level > 0 or (node.module or "").startswith("gpumux")
            ):
                found.append((node.module or ".", node.lineno))
    return found


@pytest.mark.parametrize("module", GPUMUX_MODULES, ids=ids(GPUMUX_MODULES))
def test_no_gpumux_import_inside_a_function(module: Module) -> None:
    """Imports between gpumux modules sit at module level, where cycles are visible."""
    bad = [f"line {line}: {name}" for name, line in function_level_imports(module)]
    assert not bad, f"{module.name} imports inside a function: {', '.join(bad)}"


def import_cycles(modules: list[Module]) -> list[list[str]]:
    """Strongly connected groups of more than one module in the import graph (Tarjan)."""
    graph = {m.name: {n for n, _ in gpumux_imports(m) if n in BY_NAME} for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for name in graph:
        if name not in index:
            visit(name)
    return cycles


def test_no_import_cycles() -> None:
    """No group of gpumux modules imports itself around a loop."""
    packages = {m.name for m in GPUMUX_MODULES if m.is_package}
    # A package's __init__ re-exporting its own modules is not a cycle of behaviour.
    cycles = [c for c in import_cycles(GPUMUX_MODULES) if not set(c) & packages]
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("module", ADAPTER_MODULES, ids=ids(ADAPTER_MODULES))
def test_adapter_does_not_import_coordination_or_edges(module: Module) -> None:
    """Adapters serve the scheduler and orchestrator; they never call up into them."""
    bad = [
        f"line {line}: {name}"
        for name, line in gpumux_imports(module)
        if (unit_of(name) or ("", 99))[1] >= unit_of("gpumux.scheduler.runner")[1]  # type: ignore[index]
    ]
    assert not bad, f"{module.name} is an adapter but imports: {', '.join(bad)}"


def test_layer_patterns_do_not_overlap() -> None:
    """No module is both pure and an adapter, so each is held to one set of rules."""
    assert not set(ids(PURE_MODULES)) & set(ids(ADAPTER_MODULES))


def test_relative_imports_are_resolved() -> None:
    """`from ..x import y` and `from . import z` resolve like Python resolves them."""
    known = frozenset(
        {
            "gpumux",
            "gpumux.policy",
            "gpumux.policy.base",
            "gpumux.policy.fifo",
            "gpumux.scheduler",
        }
    )
    module = Module("gpumux.policy.fifo", ROOT / "x.py", False, known)
    module.__dict__["tree"] = ast.parse(
        "from ..scheduler import Loop\nfrom . import base\nfrom .. import scheduler\n"
    )
    names = {name for name, _ in module.imports()}
    assert {"gpumux.scheduler", "gpumux.policy", "gpumux.policy.base", "gpumux"} <= names
    package = Module("gpumux.policy", ROOT / "y.py", True, known)
    package.__dict__["tree"] = ast.parse("from .fifo import Fifo\n")
    assert [name for name, _ in package.imports()] == ["gpumux.policy.fifo"]


def synthetic(name: str, source: str, *, known: frozenset[str] = frozenset()) -> Module:
    module = Module(name, ROOT / "synthetic.py", False, known | {name})
    module.__dict__["tree"] = ast.parse(source)
    return module


@pytest.mark.parametrize(
    ("check", "name", "source", "complaint"),
    [
        (
            test_pure_module_imports_no_io_clock_or_logging,
            "gpumux.core.placement",
            "import time\n",
            "imports",
        ),
        (
            test_pure_module_imports_no_io_clock_or_logging,
            "gpumux.policy.x",
            "from os import path",
            "imports",
        ),
        (
            test_imports_flow_one_way_between_layers,
            "gpumux.core.states",
            "import gpumux.http.proxy",
            "upward",
        ),
        (
            test_imports_flow_one_way_between_layers,
            "gpumux.policy.x",
            "from ..telemetry.metrics import m",
            "upward",
        ),
        (
            test_imports_flow_one_way_between_layers,
            "gpumux.gpu.probe",
            "from gpumux.procs import spawn",
            "upward",
        ),
        (
            test_adapter_does_not_import_coordination_or_edges,
            "gpumux.checkpoint.s3.store",
            "from gpumux import cli",
            "imports",
        ),
        (
            test_adapter_does_not_import_coordination_or_edges,
            "gpumux.procs.tree",
            "from ..scheduler.runner import X",
            "imports",
        ),
        (
            test_no_gpumux_import_inside_a_function,
            "gpumux.daemon.x",
            "def f():\n    from gpumux.daemon import prebake\n",
            "inside a function",
        ),
        (test_module_lives_in_a_layer_folder, "gpumux.helpers", "", "no layer"),
        (test_module_lives_in_a_layer_folder, "gpumux.core", "", "top of the package"),
    ],
)
def test_layering_checks_catch_violations(
    check: object, name: str, source: str, complaint: str
) -> None:
    """Each layering check fails on a module that breaks its rule."""
    assert callable(check)
    known = frozenset({"gpumux.cli", "gpumux.http.proxy", "gpumux.telemetry.metrics"})
    module = synthetic(name, source, known=known)
    with pytest.raises(AssertionError, match=complaint):
        check(module)


def test_cycle_finder_finds_a_loop() -> None:
    """The cycle check sees a two-module loop and leaves a chain alone."""
    known = frozenset({"gpumux.core.a", "gpumux.core.b", "gpumux.core.c"})
    a = synthetic("gpumux.core.a", "import gpumux.core.b\n", known=known)
    b = synthetic("gpumux.core.b", "from gpumux.core import a\n", known=known)
    c = synthetic("gpumux.core.c", "import gpumux.core.a\n", known=known)
    for module in (a, b, c):
        BY_NAME.setdefault(module.name, module)
    try:
        assert import_cycles([a, b, c]) == [["gpumux.core.a", "gpumux.core.b"]]
        assert import_cycles([c]) == []
    finally:
        for module in (a, b, c):
            BY_NAME.pop(module.name, None)


# --- (c) module size ---------------------------------------------------------------------


def test_median_module_is_short() -> None:
    """Modules stay small: the median is under 130 lines."""
    lengths = [m.lines for m in MODULES]
    median = statistics.median(lengths)
    longest = sorted(MODULES, key=lambda m: m.lines, reverse=True)[:5]
    assert median < MEDIAN_LINES_LIMIT, (
        f"median module length {median} >= {MEDIAN_LINES_LIMIT}; longest: "
        + ", ".join(f"{m.name} ({m.lines})" for m in longest)
    )


LONG_MODULES = [m for m in MODULES if m.lines > LONG_MODULE_LINES]


@pytest.mark.parametrize("module", LONG_MODULES, ids=ids(LONG_MODULES))
def test_long_module_says_why_in_its_docstring(module: Module) -> None:
    """A module over 400 lines explains in its docstring why it is not split."""
    docstring = (ast.get_docstring(module.tree) or "").lower()
    assert "400" in docstring or "long because" in docstring, (
        f"{module.name} has {module.lines} lines; say why in its docstring "
        "(mention 400, or 'long because ...')"
    )


# --- (d) fakes over mocks ----------------------------------------------------------------


def mock_uses(tree: ast.Module) -> list[ast.stmt | ast.expr]:
    """Imports of unittest.mock in any spelling, and `unittest.mock` attribute access."""
    uses: list[ast.stmt | ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            if any(
                a.name == "unittest.mock" or a.name.startswith("unittest.mock.") for a in node.names
            ):
                uses.append(node)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            module = node.module or ""
            from_mock = module == "unittest.mock" or module.startswith("unittest.mock.")
            mock_itself = module == "unittest" and any(a.name == "mock" for a in node.names)
            if from_mock or mock_itself:
                uses.append(node)
        elif (
            isinstance(node, ast.Attribute)
            and node.attr == "mock"
            and isinstance(node.value, ast.Name)
            and node.value.id == "unittest"
        ):
            uses.append(node)
    return uses


def unmarked_mock_lines(source: str) -> list[int]:
    lines = source.splitlines()
    bad: list[int] = []
    for node in mock_uses(ast.parse(source)):
        end = node.end_lineno or node.lineno
        span = lines[node.lineno - 1 : end]
        if not any(MOCK_BOUNDARY_MARK in line for line in span):
            bad.append(node.lineno)
    return sorted(set(bad))


@pytest.mark.parametrize("path", TEST_FILES, ids=[str(p.relative_to(ROOT)) for p in TEST_FILES])
def test_tests_use_fakes_not_unittest_mock(path: Path) -> None:
    """unittest.mock appears only on lines marked `# mock-boundary: <why>`."""
    bad = unmarked_mock_lines(path.read_text(encoding="utf-8"))
    assert not bad, (
        f"{path.relative_to(ROOT)} imports unittest.mock on lines {bad}; use a fake, or mark "
        f"the line with '{MOCK_BOUNDARY_MARK} <why>'"
    )


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ("import unittest.mock\n", [1]),
        ("from unittest import mock\n", [1]),
        ("from unittest.mock import patch\n", [1]),
        ("import unittest\nunittest.mock.patch('x')\n", [2]),
        ("import unittest.mock as m\n", [1]),
        ("from unittest.mock import patch  # mock-boundary: the kernel\n", []),
        ("from unittest.mock import (\n    patch,  # mock-boundary: the kernel\n)\n", []),
        ("text = 'unittest.mock'\n", []),
        ("import unittest\n", []),
    ],
)
def test_mock_detector(source: str, flagged: list[int]) -> None:
    """The detector finds every spelling of unittest.mock and honours the marker."""
    assert unmarked_mock_lines(source) == flagged
