"""The `lbproxy` command line: run, check, demo, and --version.

Owns parsing the command line, validating the config file before anything starts, and
setting up logging once (`--log-level`) for `run` and `demo`. Must not touch processes or
sockets itself: `lbproxy.process.run` and `lbproxy.demo` do that.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import metadata

from lbproxy.control import config
from lbproxy.process import logs

log = logging.getLogger("lbproxy.cli")


def _errors(exc: config.ConfigError) -> list[str]:
    return [f"{field}: {msg}" if field else msg for field, msg in exc.errors]


def _check(path: str) -> int:
    try:
        config.load(path)
    except config.ConfigError as exc:
        for line in _errors(exc):
            print(f"error: {line}", file=sys.stderr)
        return 1
    print(f"{path}: ok")
    return 0


def _run(path: str, workers: int, log_level: str) -> int:
    logs.configure(log_level)
    try:
        cfg = config.load(path)
    except config.ConfigError as exc:
        for line in _errors(exc):
            log.error("error: %s", line)
        log.error("invalid config %s; not starting", path)
        return 1
    from lbproxy.process.run import run  # after validation: start-up imports uvloop, aiohttp

    return run(cfg, workers, config_path=path, log_level=log_level)


def _demo(log_level: str) -> int:
    from lbproxy import demo  # aiohttp and uvloop: only for the demo

    logs.configure(log_level)
    return demo.main()


def _workers(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _version() -> str:
    try:
        return metadata.version("lbproxy")
    except metadata.PackageNotFoundError:
        # Run from a source tree that was never installed: the version the package states.
        from lbproxy import __version__

        return __version__


def _add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", choices=logs.LEVELS, default=logs.DEFAULT_LEVEL,
                        help="the lowest level of log lines written to stderr "
                             f"(default: {logs.DEFAULT_LEVEL})")


def parser() -> argparse.ArgumentParser:
    """The argument parser of the `lbproxy` command."""
    top = argparse.ArgumentParser(prog="lbproxy", description="lbproxy: an edge load "
                                  "balancer and reverse proxy for short-video traffic.")
    top.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                     help="print lbproxy's version and exit")
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the proxy until SIGTERM/SIGINT (SIGHUP reloads)")
    run.add_argument("-c", "--config", required=True,
                     help="the config file (TOML; .yaml/.yml or .json by extension)")
    run.add_argument("--workers", type=_workers, default=1,
                     help="worker processes, each with its own SO_REUSEPORT listener "
                          "(default: 1, everything in one process)")
    _add_log_level(run)
    chk = sub.add_parser("check", help="validate a config file: exit 0, or 1 naming each "
                                       "error's field")
    chk.add_argument("-c", "--config", required=True,
                     help="the config file (TOML; .yaml/.yml or .json by extension)")
    demo = sub.add_parser("demo", help="proxy on 127.0.0.1:8080 (admin API on :9901) with "
                                       "embedded demo backends; prints curl examples")
    _add_log_level(demo)
    return top


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command; returns the exit status."""
    args = parser().parse_args(argv)
    if args.command == "check":
        return _check(args.config)
    if args.command == "run":
        return _run(args.config, args.workers, args.log_level)
    return _demo(args.log_level)
