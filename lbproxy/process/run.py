"""`run`: what ``lbproxy run`` starts, one process or a supervisor and its workers.

Owns choosing the process shape from ``--workers`` (1: `single.serve` here; more: a
`Supervisor`), the event loop (uvloop), the open-file limit, and turning a `StartupError`
into a logged line and exit status 1. Must not touch logging's set-up (the CLI configures
it once) or the config file's validation (the CLI validates before calling).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvloop

from lbproxy.control import config
from lbproxy.process import logs, startup
from lbproxy.process.single import serve
from lbproxy.process.startup import StartupError, load_dataplane
from lbproxy.process.supervisor import Supervisor

log = logging.getLogger(__name__)


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one; returns the limit now in force."""
    # Every client and every upstream connection is a descriptor; a distribution's default
    # soft limit (often 1024) would cap a proxy at a few hundred clients. nginx raises it
    # with worker_rlimit_nofile, HAProxy from maxconn; workers inherit it across exec.
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run(cfg: config.Config, workers: int = 1, dataplane: str | None = None,
        config_path: str | None = None, log_level: str = logs.DEFAULT_LEVEL) -> int:
    """Run the proxy until SIGTERM/SIGINT (SIGHUP reloads `config_path`); the exit status.

    `log_level` is what workers log at; this process logs as the caller configured it.
    """
    # Looked up now, not bound at import: tests point a whole `lbproxy run` at a stand-in.
    dataplane = dataplane or startup.DEFAULT_DATAPLANE
    raise_fd_limit()

    async def main() -> int:
        if workers == 1:
            await serve(cfg, dataplane=load_dataplane(dataplane), config_path=config_path)
            return 0
        return await Supervisor(cfg, workers, dataplane, config_path=config_path,
                                log_level=log_level).run()

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main())
    except StartupError as exc:
        log.error("%s", exc)
        return 1
