"""Signals: SIGTERM/SIGINT start the drain, SIGHUP reloads the config file.

Owns the handlers on the event loop: the first stop signal sets an `asyncio.Event` (later
ones are ignored, the drain has its own deadline), and SIGHUP re-reads the config file into
`Controller.apply` (the single process and the supervisor; a worker ignores SIGHUP, its
supervisor sends it the result). Must not touch sockets or what the drain does.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from lbproxy.control import config
from lbproxy.control.controller import Controller

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install_stop(loop: asyncio.AbstractEventLoop,
                 stop: asyncio.Event | None = None) -> asyncio.Event:
    """`stop` (or a new event) is set by the first SIGTERM or SIGINT; later ones are ignored."""
    if stop is None:
        stop = asyncio.Event()

    def first_signal() -> None:
        # Once draining, further SIGTERM/SIGINT are ignored (the drain has its own deadline):
        # a second signal must not kill the process after the loop removed its handlers,
        # which would turn a clean exit 0 into death by signal.
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
        stop.set()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, first_signal)
    return stop


def install_reload(loop: asyncio.AbstractEventLoop, controller: Controller, path: str) -> None:
    """SIGHUP re-reads `path`; a valid file becomes the next snapshot, else nothing changes."""

    def reload() -> None:
        try:
            snap = controller.apply(config.load(path))
        except config.ConfigError as exc:
            for field, msg in exc.errors:
                log.error("reload rejected, keeping version %d: %s",
                          controller.snapshot.version, f"{field}: {msg}" if field else msg)
            return
        log.info("reloaded %s (version %d)", path, snap.version)

    loop.add_signal_handler(signal.SIGHUP, reload)


def ignore_reload() -> None:
    """SIGHUP does nothing here: in a worker, reloading is the supervisor's to do."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
