"""One process does everything (``--workers 1``, the default, and `lbproxy demo`).

Owns `serve`: the listener and its data plane, the admin API, health checks and the
ejection sweep, SIGHUP reload and the graceful drain, all in this process's event loop.
Must not touch other processes; the supervisor (lbproxy/process/supervisor.py) does that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from lbproxy.control import config, upkeep
from lbproxy.control.controller import Controller
from lbproxy.process import signals
from lbproxy.process.listeners import Listener, hostport, probe_port, start_admin_api
from lbproxy.process.startup import DataPlaneFactory, assign

if TYPE_CHECKING:
    # The admin API (aiohttp, prometheus_client: ~17 MiB resident) is imported only where
    # it runs: the single process or the supervisor, never a worker.
    from lbproxy.admin.api import AdminAPI

log = logging.getLogger(__name__)

OnReady = Callable[[Listener, "AdminAPI"], Awaitable[None] | None]


async def serve(cfg: config.Config, *, dataplane: DataPlaneFactory,
                stop: asyncio.Event | None = None, on_ready: OnReady | None = None,
                config_path: str | None = None) -> None:
    """Run one listener, its data plane and the admin API in this process until `stop`.

    Without `stop`, SIGTERM/SIGINT set one. With `config_path`, SIGHUP reloads that file.
    """
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = signals.install_stop(loop)
    host, port = config.parse_hostport(cfg.listener.bind)
    port = probe_port(host, port)
    controller = Controller(cfg)
    listener = Listener(cfg, controller.snapshot, dataplane, port)
    from lbproxy.admin.api import AdminAPI

    admin = AdminAPI(controller.snapshot, controller=controller)
    controller.sinks += [assign(listener.dataplane), admin.take]
    admin_host, admin_port = await start_admin_api(admin, cfg.admin.bind)
    if config_path is not None:
        signals.install_reload(loop, controller, config_path)
    background = upkeep.start(controller)  # health checks run where the data plane is
    try:
        await listener.start()
        admin.accepting = True
        log.info("%s", listener.describe(1, 1))
        log.info("admin API on %s", hostport(admin_host, admin_port))
        if on_ready is not None:
            result = on_ready(listener, admin)
            if result is not None:
                await result
        await stop.wait()
        log.info("draining")
        admin.draining = True
        await listener.drain()
    finally:
        await background.stop()
        await admin.stop()
    log.info("stopped")
