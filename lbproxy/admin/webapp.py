"""Starting an aiohttp application on one TCP address (admin API and demo backends).

Owns only the runner/site start-up and clean-up so callers get (runner, bound port) or an
OSError with nothing left open. Must not touch the data plane: it is not built on aiohttp.
"""

from __future__ import annotations

from aiohttp import web


async def start_app(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port (0 = any free port); returns (runner, bound port)."""
    # handle_signals=False: the server owns SIGTERM/SIGINT (graceful drain), not aiohttp.
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])
