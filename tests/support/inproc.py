"""The proxy inside the test's own uvloop loop: a bare `DataPlane` on 127.0.0.1 port 0
(`InProcProxy`, `running`), or `single.serve` with its admin API (`serving`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import uvloop

from lbproxy.admin.api import AdminAPI
from lbproxy.control import config
from lbproxy.control.snapshot import snapshot_of
from lbproxy.process.listeners import Listener
from lbproxy.process.single import serve
from lbproxy.proxy import DataPlane
from support.backends import Backend, stop_leftovers, track_listening, untrack_listening
from support.configs import config_doc

TEST_TIMEOUT = 120.0


def on_uvloop(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test on a fresh uvloop loop (as production does), bounded in time."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        async def bounded() -> None:
            loop = asyncio.get_running_loop()
            assert isinstance(loop, uvloop.Loop)
            try:
                await asyncio.wait_for(fn(*args, **kwargs), TEST_TIMEOUT)
            finally:  # a failed test may not have stopped what it started
                await stop_leftovers()

        uvloop.run(bounded())

    return run


def make_config(addresses: list[str], **overrides: Any) -> config.Config:
    """A config with one round-robin cluster ``c`` of `addresses` and one catch-all route;
    `overrides` are top-level sections (a dict merged over the default of its name)."""
    clusters = {"c": addresses, **overrides.pop("clusters", {})}
    return config.from_dict(config_doc(clusters, **overrides))


class InProcProxy:
    """A DataPlane listening on 127.0.0.1, port 0, in this loop."""

    def __init__(self, cfg: config.Config) -> None:
        self.cfg = cfg
        self.snapshot = snapshot_of(cfg)
        self.loop = asyncio.get_running_loop()
        self.plane = DataPlane(self.snapshot, self.loop)
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> InProcProxy:
        """Listen."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self.plane.protocol_factory, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        track_listening(self)
        return self

    async def stop(self) -> None:
        """Stop listening and drain quickly."""
        assert self.server is not None
        untrack_listening(self)
        self.server.close()
        await self.plane.drain(0.5)


@contextlib.asynccontextmanager
async def running(*backends: Backend, **overrides: Any) -> AsyncIterator[InProcProxy]:
    """Start `backends` and a proxy routing to them (`make_config`); stop everything
    afterwards, and fail if a backend's own code failed."""
    for b in backends:
        if not b.port:
            await b.start()
    proxy = await InProcProxy(make_config([b.address for b in backends], **overrides)).start()
    try:
        yield proxy
    finally:
        await stop_all(proxy, backends)


async def stop_all(proxy: InProcProxy, backends: Iterable[Backend]) -> None:
    """Stop `proxy`, then `backends`; fail if a backend's own code failed."""
    await proxy.stop()
    for b in backends:
        await b.stop()
    for b in backends:
        assert not b.errors, f"backend handler failed: {b.errors!r}"


@dataclass
class Serving:
    """`serve` running in this loop: its listener, admin API, stop event and task."""

    listener: Listener
    admin: AdminAPI
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def port(self) -> int:
        """The listener's port."""
        return self.listener.port

    @property
    def admin_port(self) -> int:
        """The admin API's port."""
        runner = self.admin._runner
        assert runner is not None
        return int(runner.addresses[0][1])


@contextlib.asynccontextmanager
async def serving(cfg: dict[str, Any] | config.Config) -> AsyncIterator[Serving]:
    """`serve` with the real data plane in this loop until the block ends (or the
    test sets `stop` itself)."""
    if isinstance(cfg, dict):
        cfg = config.from_dict(cfg)
    stop = asyncio.Event()
    ready: asyncio.Future[tuple[Listener, AdminAPI]] = (
        asyncio.get_running_loop().create_future())
    task = asyncio.create_task(serve(
        cfg, dataplane=DataPlane, stop=stop,
        on_ready=lambda listener, admin: ready.set_result((listener, admin))))
    try:
        listener, admin = await asyncio.wait_for(ready, 20)
        yield Serving(listener, admin, stop, task)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
