"""The `lbproxy` command line: run, check, demo (see CONTRACT.md)."""

from __future__ import annotations

import argparse
import sys

from lbproxy.control import config


def _load(path: str) -> config.Config | None:
    try:
        return config.load(path)
    except config.ConfigError as exc:
        for field, msg in exc.errors:
            print(f"error: {field}: {msg}" if field else f"error: {msg}", file=sys.stderr)
        return None


def _check(path: str) -> int:
    if _load(path) is None:
        return 1
    print(f"{path}: ok")
    return 0


def _run(path: str, workers: int) -> int:
    cfg = _load(path)
    if cfg is None:
        print(f"lbproxy: invalid config {path}; not starting", file=sys.stderr)
        return 1
    from lbproxy.process import server  # after validation: start-up imports uvloop and aiohttp

    return server.run(cfg, workers, config_path=path)


def _workers(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="lbproxy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the proxy")
    run.add_argument("-c", "--config", required=True)
    run.add_argument("--workers", type=_workers, default=1,
                     help="worker processes, each with its own SO_REUSEPORT listener")
    chk = sub.add_parser("check", help="validate a config file")
    chk.add_argument("-c", "--config", required=True)
    sub.add_parser("demo", help="proxy on 127.0.0.1:8080 with embedded demo backends")
    args = parser.parse_args(argv)
    if args.command == "check":
        return _check(args.config)
    if args.command == "run":
        return _run(args.config, args.workers)
    from lbproxy import demo

    return demo.main()
