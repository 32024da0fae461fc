"""Upstream pools and snapshots: connection limits, idle expiry, and the snapshot swap."""

from __future__ import annotations

import asyncio

from support.backends import Answer, Backend
from support.inproc import make_config, on_uvloop, running
from support.wire import Client

from lbproxy.control.snapshot import snapshot_of

H = b"Host: a\r\n"


@on_uvloop
async def test_max_connections_queues_instead_of_opening_more() -> None:
    backend = Backend(lambda req: Answer(body=req.target))
    async with running(backend, upstream={"max_connections": 1}) as proxy:
        clients = [await Client.connect(proxy.port) for _ in range(5)]
        for i, c in enumerate(clients):
            await c.send(b"GET /%d HTTP/1.1\r\n" % i + H + b"\r\n")
        bodies = [(await c.response()).body for c in clients]
        for c in clients:
            c.close()
    assert sorted(bodies) == [b"/%d" % i for i in range(5)]
    assert backend.connections == 1


@on_uvloop
async def test_idle_pooled_connections_expire() -> None:
    backend = Backend()
    async with running(backend, upstream={"idle_timeout": 0.1},
                       timeouts={"client_idle": 0.2}) as proxy:
        c = await Client.connect(proxy.port)
        await c.send(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
        assert (await c.response()).status == 200
        await asyncio.sleep(0.6)
        assert await backend_saw_eof(backend)
        c.close()


async def backend_saw_eof(backend: Backend) -> bool:
    """Give the backend's handler a moment to see the proxy's close."""
    for _ in range(50):
        if backend.conns[0].writer.is_closing():
            return True
        await asyncio.sleep(0.02)
    return False


@on_uvloop
async def test_max_idle_zero_never_pools() -> None:
    backend = Backend()
    async with running(backend, upstream={"max_idle": 0}) as proxy:
        c = await Client.connect(proxy.port)
        for _ in range(3):
            await c.send(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
            assert (await c.response()).status == 200
        c.close()
    assert backend.connections == 3


@on_uvloop
async def test_snapshot_swap_applies_to_the_next_request() -> None:
    old, new = Backend(lambda r: Answer(body=b"old")), Backend(lambda r: Answer(body=b"new"))
    await new.start()
    async with running(old) as proxy:
        c = await Client.connect(proxy.port)
        await c.send(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
        assert (await c.response()).body == b"old"
        proxy.plane.snapshot = snapshot_of(make_config([new.address]), version=2)
        await c.send(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
        assert (await c.response()).body == b"new"
        c.close()
    await new.stop()
