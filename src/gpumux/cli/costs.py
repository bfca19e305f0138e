"""`gpumux costs`: a daemon's learned switch costs, as a table or as a cost profile.

Owns: the command's arguments (`--admin-url`/`--config` to ask a running daemon's admin
API, or `--state-dir DIR` to read the `switch_costs.json` it keeps there, e.g. while it is
stopped; `--profile` to print a cost profile `gpumux simulate --cost-profile FILE` reads,
`--base NAME|FILE` for the rates it did not measure, `--name`; `--json` for the raw
table) and exit codes (0 done, 1 unreachable or nothing learned, 2 bad config or base).
Does not: know HTTP (`cli.admin_client`), the file format (`daemon.costs_store`) or the
profile schema (`simulate.export`, `simulate.cost_profile`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gpumux.cli.admin_client import AdminError, call, resolve_target
from gpumux.core.config_rules import ConfigProblems
from gpumux.daemon.costs_store import costs_path, load_costs
from gpumux.policy.costs import SwitchCosts
from gpumux.simulate.cost_profile import ProfileError, load_profile, profile_json
from gpumux.simulate.export import profile_from_costs

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def add_costs_command(sub: Any) -> None:
    costs = sub.add_parser(
        "costs", help="show a daemon's learned switch costs, or export them as a cost profile"
    )
    costs.add_argument(
        "--admin-url", help="default: http://127.0.0.1:<admin_port from --config, else 3001>"
    )
    costs.add_argument("--config", help="read admin_port and admin_token_env from this config")
    costs.add_argument(
        "--state-dir", metavar="DIR", help="read DIR/switch_costs.json instead of asking"
    )
    costs.add_argument(
        "--profile", action="store_true", help="print a cost profile for simulate --cost-profile"
    )
    costs.add_argument(
        "--base", default="h200-vm", metavar="NAME|FILE", help="rates not measured (h200-vm)"
    )
    costs.add_argument("--name", default="learned", help="the profile's name (learned)")
    costs.add_argument("--json", action="store_true", help="print the raw learned table")
    costs.set_defaults(func=cmd_costs)


def cmd_costs(args: argparse.Namespace) -> int:
    try:
        base = load_profile(args.base)
    except ProfileError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_CONFIG
    try:
        learned = _learned(args)
    except ConfigProblems as problems:
        for error in problems.errors:
            sys.stderr.write(f"error: {error}\n")
        return EXIT_CONFIG
    except (AdminError, OSError) as exc:
        sys.stderr.write(f"gpumux: {exc}\n")
        return EXIT_FAILED
    if args.profile:
        profile = profile_from_costs(learned, base=base, name=args.name)
        sys.stdout.write(profile_json(profile) + "\n")
    elif args.json:
        sys.stdout.write(json.dumps(learned.to_dict(), indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(_table(learned) + "\n")
    return EXIT_OK


def _learned(args: argparse.Namespace) -> SwitchCosts:
    if args.state_dir is not None:
        if not costs_path(args.state_dir).exists():
            raise OSError(f"{costs_path(args.state_dir)}: no learned costs there")
        costs, warning = load_costs(args.state_dir)
        if warning is not None:
            raise OSError(warning)
        return costs
    status = call(resolve_target(args.admin_url, args.config), "GET", "/api/status")
    table = status.get("costs") if isinstance(status, dict) else None
    if not isinstance(table, dict):
        raise AdminError("the admin API's status has no learned costs")
    return SwitchCosts.from_dict(table)


def _table(costs: SwitchCosts) -> str:
    rows = [("MODEL", "OPERATION", "EVICTION", "SECONDS", "SAMPLES")]
    for key, secs in sorted(costs.ops.items()):
        model, op, strategy = [*key.rsplit("|", 2), "", ""][:3]
        rows.append((model, op, strategy, f"{secs:.3f}", str(costs.samples.get(key, 0))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
