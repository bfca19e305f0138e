"""The `gpumux status` and `gpumux switch MODEL` subcommands (clients of the admin API).

Owns: their arguments and exit codes (0 done, 1 refused or unreachable, 2 bad config),
and writing their output.
Does not: exit (cli.py does) or know HTTP details (admin_client does).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gpumux.cli.admin_client import (
    SWITCH_TIMEOUT_SECS,
    AdminError,
    call,
    format_status,
    format_switch,
    resolve_target,
)
from gpumux.core.config_rules import ConfigProblems

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def _target_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--admin-url", help="default: http://127.0.0.1:<admin_port from --config, else 3001>"
    )
    parser.add_argument("--config", help="read admin_port and admin_token_env from this config")
    parser.add_argument("--json", action="store_true", help="print the raw JSON reply")


def add_admin_commands(sub: Any) -> None:
    """Register `status` and `switch` on the CLI's subparsers."""
    status = sub.add_parser("status", help="show models, states, queues and last switches")
    _target_args(status)
    status.set_defaults(func=cmd_status)
    switch = sub.add_parser("switch", help="force a switch to MODEL; print its phases")
    switch.add_argument("model")
    _target_args(switch)
    switch.set_defaults(func=cmd_switch)


def cmd_status(args: argparse.Namespace) -> int:
    return _run(args, "GET", "/api/status", None, format_status)


def cmd_switch(args: argparse.Namespace) -> int:
    return _run(args, "POST", "/api/switch", {"model": args.model}, format_switch)


def _run(
    args: argparse.Namespace,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    render: Any,
) -> int:
    try:
        target = resolve_target(args.admin_url, args.config)
    except ConfigProblems as problems:
        for error in problems.errors:
            sys.stderr.write(f"error: {error}\n")
        return EXIT_CONFIG
    timeout = SWITCH_TIMEOUT_SECS if body is not None else 10.0
    try:
        reply = call(target, method, path, body, timeout=timeout)
    except AdminError as exc:
        sys.stderr.write(f"gpumux: {exc}\n")
        return EXIT_FAILED
    sys.stdout.write((json.dumps(reply, indent=2) if args.json else render(reply)) + "\n")
    return EXIT_OK
