"""The `gpumux simulate` command: arguments in, a per-policy table (or JSON) out.

Owns: the command's arguments (CONFIG, `--workload NAME | --trace FILE`, `--policy P`
repeatable (default: the config's policy), `--duration SECS`, `--seed N`,
`--switch-cost SECS` or `--cost-profile NAME|FILE`, `--bound`, `--plot PNG`, `--json`)
and its output: `--json` prints exactly `{policy: {mean_wait, p50_wait, p99_wait,
max_wait, switches, busy_fraction, over_bound, completed}}`, plus `"bound": {p99_wait,
busy_fraction, method, requests}` with `--bound`, otherwise a Markdown table. Exit 0,
or 2 for a bad config, trace or profile.
Does not: define the top-level CLI (`cli` calls `add_arguments` and `run`). Output goes
through `sys.stdout.write`, since only `cli` may print.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gpumux.core.config_rules import ConfigProblems
from gpumux.daemon.config_file import load_config
from gpumux.policy.registry import POLICIES
from gpumux.simulate.bound import compute_bound
from gpumux.simulate.cost_profile import BUILTIN, ProfileError, load_profile
from gpumux.simulate.plot import plot
from gpumux.simulate.report import bound_line, markdown, rounded, summarize
from gpumux.simulate.runs import load, run_policies
from gpumux.simulate.switch_model import CostSource, SwitchModel
from gpumux.simulate.workloads import WORKLOADS, TraceError


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="gpumux JSON config")
    load_from = parser.add_mutually_exclusive_group(required=True)
    load_from.add_argument("--workload", choices=sorted(WORKLOADS), help="named workload")
    load_from.add_argument("--trace", type=Path, metavar="FILE", help="JSONL trace to replay")
    parser.add_argument(
        "--policy",
        action="append",
        choices=sorted(POLICIES),
        dest="policies",
        metavar="P",
        help="policy to run (repeatable; default: the config's policy_type)",
    )
    parser.add_argument(
        "--duration", type=_positive, metavar="SECS", help="simulated seconds (default 3600)"
    )
    parser.add_argument("--seed", type=int, default=0, help="workload random seed (default 0)")
    costs = parser.add_mutually_exclusive_group()
    costs.add_argument(
        "--switch-cost",
        type=_non_negative,
        metavar="SECS",
        help="every evict + wake pair costs this (default: per-step costs by strategy)",
    )
    costs.add_argument(
        "--cost-profile",
        metavar="NAME|FILE",
        help=f"per-byte step costs of a machine: built in ({', '.join(sorted(BUILTIN))}) "
        "or a JSON profile (`gpumux costs --profile` exports a daemon's)",
    )
    parser.add_argument(
        "--bound",
        action="store_true",
        help="also compute a lower bound on p99 wait (and an upper bound on GPU busy) "
        "that no policy can beat on this load (docs/policies.md, 'The bound')",
    )
    parser.add_argument("--plot", type=Path, metavar="PNG", help="draw queue waits over time")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    try:
        costs: CostSource = (
            load_profile(args.cost_profile)
            if args.cost_profile is not None
            else SwitchModel(args.switch_cost)
        )
        config, warnings = load_config(args.config)
        config, arrivals = load(
            config,
            workload=args.workload,
            trace=args.trace,
            duration=args.duration,
            seed=args.seed,
        )
    except ConfigProblems as exc:
        for line in exc.errors:
            sys.stderr.write(f"error: {line}\n")
        return 2
    except (TraceError, ProfileError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    for line in warnings:
        sys.stderr.write(f"warning: {line}\n")
    policies = list(dict.fromkeys(args.policies or [config.policy.policy_type]))
    records = run_policies(config, arrivals, policies, costs)
    results = {policy: rounded(summarize(record)) for policy, record in records.items()}
    bound = compute_bound(config, arrivals, costs).to_dict() if args.bound else None
    if args.json:
        payload: dict[str, object] = dict(results)
        if bound is not None:
            payload["bound"] = bound
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        source = args.workload or str(args.trace)
        sys.stdout.write(f"{source}: {len(arrivals)} requests, {len(config.models)} models\n\n")
        sys.stdout.write(markdown(results) + "\n")
        if bound is not None:
            sys.stdout.write("\n" + bound_line(bound) + "\n")
    if args.plot is not None:
        plot(records, args.plot, title=args.workload or args.trace.name)
    return 0
