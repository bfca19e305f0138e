"""`gpumux fleet haproxy-config FLEET.json [--out FILE]`: write a fleet's haproxy.cfg.

Owns: the subcommand's arguments, reading the fleet file and each node's gpumux config
(a relative `config` path is relative to the fleet file), printing every problem at once
(exit 2) or the warnings, and writing the file (atomically with `--out`, else stdout).
Does not: decide what the file says (`fleet.plan`, `fleet.haproxy`) or run HAProxy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from gpumux.core.config import Config
from gpumux.core.config_rules import ConfigProblems
from gpumux.daemon.config_file import load_config
from gpumux.fleet.haproxy import render_haproxy
from gpumux.fleet.plan import plan_fleet
from gpumux.fleet.spec import FleetFile, FleetProblems, config_path, fleet_errors, parse_fleet

EXIT_OK = 0
EXIT_CONFIG = 2


def add_fleet_commands(sub: Any) -> None:
    """Register `fleet haproxy-config` on the CLI's subparsers."""
    fleet = sub.add_parser("fleet", help="several gpumux nodes behind one HAProxy")
    commands = fleet.add_subparsers(dest="fleet_command", required=True)
    haproxy = commands.add_parser(
        "haproxy-config", help="write haproxy.cfg for the nodes of a fleet file"
    )
    haproxy.add_argument("fleet", metavar="FLEET.json")
    haproxy.add_argument("--out", metavar="FILE", help="write here (default: stdout)")
    haproxy.set_defaults(func=cmd_haproxy_config)


def cmd_haproxy_config(args: argparse.Namespace) -> int:
    path = Path(args.fleet)
    try:
        fleet = parse_fleet(_read_json(path))
    except FleetProblems as problems:
        return _fail(path, problems.errors)
    configs, errors = _node_configs(path, fleet)
    if errors:
        return _fail(path, errors)
    errors = fleet_errors(fleet, configs)
    if errors:
        return _fail(path, errors)
    plan = plan_fleet(fleet, configs)
    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    text = render_haproxy(plan)
    if args.out is None:
        sys.stdout.write(text)
    else:
        _write_atomically(Path(args.out), text)
        print(f"{args.out}: {len(plan.models)} models on {len(plan.nodes)} nodes", file=sys.stderr)
    return EXIT_OK


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise FleetProblems([f"{path}: cannot be read ({exc.strerror or exc})"]) from None
    except UnicodeDecodeError:
        raise FleetProblems([f"{path}: not UTF-8 text"]) from None
    except json.JSONDecodeError as exc:
        where = f"{path}:{exc.lineno}:{exc.colno}"
        raise FleetProblems([f"{where}: not valid JSON: {exc.msg}"]) from None


def _node_configs(path: Path, fleet: FleetFile) -> tuple[dict[str, Config], list[str]]:
    configs: dict[str, Config] = {}
    errors: list[str] = []
    for node in fleet.nodes:
        try:
            configs[node.name], warnings = load_config(config_path(path, node))
        except ConfigProblems as problems:
            errors += [f"nodes.{node.name}: {error}" for error in problems.errors]
            continue
        for warning in warnings:
            print(f"warning: nodes.{node.name}: {warning}", file=sys.stderr)
    return configs, errors


def _fail(path: Path, errors: list[str]) -> int:
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    print(f"{path}: {len(errors)} problem(s)", file=sys.stderr)
    return EXIT_CONFIG


def _write_atomically(target: Path, text: str) -> None:
    """A reloading HAProxy never reads half a file."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
