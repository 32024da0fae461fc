"""The `lbproxy` command line: run, check, demo (see CONTRACT.md)."""

from __future__ import annotations

import argparse
import sys

from lbproxy import config


def _check(path: str) -> int:
    try:
        config.load(path)
    except config.ConfigError as exc:
        for field, msg in exc.errors:
            print(f"error: {field}: {msg}" if field else f"error: {msg}", file=sys.stderr)
        return 1
    print(f"{path}: ok")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="lbproxy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the proxy")
    run.add_argument("-c", "--config", required=True)
    run.add_argument("--workers", type=int, default=1)
    chk = sub.add_parser("check", help="validate a config file")
    chk.add_argument("-c", "--config", required=True)
    sub.add_parser("demo", help="proxy with embedded demo backends")
    args = parser.parse_args(argv)
    if args.command == "check":
        return _check(args.config)
    print(f"lbproxy {args.command}: not built yet", file=sys.stderr)
    return 2
