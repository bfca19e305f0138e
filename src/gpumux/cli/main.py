"""The `gpumux` command line: serve, validate, schema, simulate, status, switch, costs, fleet.

Owns: argument parsing, mapping problems to exit codes (0 ok, 2 invalid config or
usage), and printing. The only module that exits the process.
Does not: contain behaviour; each subcommand calls into the package.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from gpumux.cli.admin import add_admin_commands
from gpumux.cli.costs import add_costs_command
from gpumux.cli.fleet import add_fleet_commands
from gpumux.core.config import Config, json_schema
from gpumux.core.config_rules import ConfigProblems
from gpumux.daemon.components import ServeOptions
from gpumux.daemon.config_file import load_config
from gpumux.daemon.daemon import serve as run_daemon
from gpumux.daemon.prebake import PrebakeFailed, check_request, run_prebake, summary
from gpumux.simulate import command as simulate_command
from gpumux.telemetry.logs import configure_logging, default_format

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2  # also systemd's RestartPreventExitStatus: a bad config never loops


def _print_problems(problems: ConfigProblems) -> None:
    for warning in problems.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for error in problems.errors:
        print(f"error: {error}", file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        _config, warnings = load_config(args.config)
    except ConfigProblems as problems:
        _print_problems(problems)
        print(f"{args.config}: {len(problems.errors)} problem(s)", file=sys.stderr)
        return EXIT_CONFIG
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.config}: ok")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        config, warnings = load_config(args.config)
    except ConfigProblems as problems:
        _print_problems(problems)
        return EXIT_CONFIG
    configure_logging(args.log_format or default_format())
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.checkpoint is not None:
        return cmd_prebake(config, args.checkpoint, args.eviction)
    options = ServeOptions(
        port=args.port,
        admin_port=args.admin_port,
        metrics_port=args.metrics_port,
        config_path=args.config,
    )
    try:
        return run_daemon(config, options)
    except ConfigProblems as problems:  # found at start-up, before binding (e.g. no token)
        _print_problems(problems)
        return EXIT_CONFIG


def cmd_prebake(config: Config, model: str, eviction_text: str | None) -> int:
    """`serve --checkpoint MODEL`: bake a CRIU image of MODEL, print where it is, exit."""
    try:
        eviction = check_request(config, model, eviction_text)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        result = run_prebake(config, model, eviction)
    except ConfigProblems as problems:  # e.g. manifest_key_env names an unset variable
        _print_problems(problems)
        return EXIT_CONFIG
    except PrebakeFailed as exc:
        print(f"error: pre-baking {model} failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(summary(model, result))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpumux", description=__doc__.splitlines()[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("config")
    serve.add_argument("--port", type=int)
    serve.add_argument("--admin-port", type=int)
    serve.add_argument("--metrics-port", type=int)
    serve.add_argument("--log-format", choices=["json", "console"])
    serve.add_argument(
        "--checkpoint", metavar="MODEL", help="pre-bake a CRIU image of MODEL and exit"
    )
    serve.add_argument(
        "--eviction", metavar="WEIGHTS+PROCESS", help="with --checkpoint (discard+checkpoint)"
    )
    serve.set_defaults(func=cmd_serve)

    validate = sub.add_parser("validate", help="check a config; exit 0 or 2")
    validate.add_argument("config")
    validate.set_defaults(func=cmd_validate)

    schema = sub.add_parser("schema", help="print the config's JSON Schema")
    schema.set_defaults(func=cmd_schema)

    simulate = sub.add_parser("simulate", help="replay load against the scheduler in virtual time")
    simulate_command.add_arguments(simulate)
    simulate.set_defaults(func=simulate_command.run)

    add_admin_commands(sub)
    add_costs_command(sub)
    add_fleet_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gpumux` console script."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
