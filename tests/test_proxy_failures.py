"""Failure modes: backend refusal/reset/death, client aborts, every timeout, bad responses.

Each test also checks the lease accounting: one `Lease.end()` per request, with the
outcome the failure deserves, and nothing left in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest
from support.backends import Answer, Backend, Conn
from support.inproc import InProcProxy, make_config, on_uvloop, running
from support.waiting import until
from support.wire import Client, exchange_async, parse_response, pattern_pieces

from lbproxy.balance.gate import Outcome

H = b"Host: a\r\n"
GET_CLOSE = b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
FAST = {"request_headers": 0.3, "client_body_idle": 0.3, "client_idle": 0.3, "connect": 0.3,
        "upstream_headers": 0.3, "upstream_idle": 0.3}


def outcomes(proxy: InProcProxy) -> dict[Outcome, int]:
    """Lease outcomes summed over the cluster's backends (and nothing in flight)."""
    state = proxy.snapshot.clusters["c"].state
    total = {o: 0 for o in Outcome}
    for address, slot in state.slots.items():
        assert state.inflight(address) == 0
        for o in Outcome:
            total[o] += state.counters[slot].by_outcome[o]
    return {o: n for o, n in total.items() if n}


def settled(proxy: InProcProxy) -> dict[Outcome, int]:
    """`outcomes(proxy)` once nothing is in flight; {} before that."""
    state = proxy.snapshot.clusters["c"].state
    if any(state.inflight(address) for address in state.slots):
        return {}
    return outcomes(proxy)


async def never_answers(conn: Conn) -> None:
    """Backend handler: read the request, then never answer."""
    await conn.read()
    await conn.reader.read()


@on_uvloop
async def test_backend_refusing_connections_is_502_connect_failed(refused_address: str) -> None:
    proxy = await InProcProxy(make_config([refused_address])).start()
    try:
        out = await exchange_async(proxy.port, b"GET / HTTP/1.1\r\n" + H + b"\r\n")
        assert out.first.status == 502
        assert out.first.header(b"x-lbproxy-error") == b"backend_connect_failed"
        assert outcomes(proxy) == {Outcome.CONNECT_FAILED: 1}
    finally:
        await proxy.stop()


@pytest.mark.parametrize("how", ["close", "reset"])
@on_uvloop
async def test_backend_dying_before_the_response_is_502(how: str) -> None:
    async def handler(conn: Conn) -> None:
        await conn.read()
        conn.reset() if how == "reset" else conn.writer.close()

    backend = Backend(serve=handler)
    async with running(backend) as proxy:
        out = await exchange_async(proxy.port, b"GET / HTTP/1.1\r\n" + H + b"\r\n")
        assert out.first.status == 502
        assert out.first.header(b"x-lbproxy-error") == b"backend_failed"
        assert outcomes(proxy) == {Outcome.RESET: 1}


@pytest.mark.parametrize("chunked", [False, True], ids=["fixed", "chunked"])
@on_uvloop
async def test_backend_dying_mid_body_never_looks_complete(chunked: bool) -> None:
    async def handler(conn: Conn) -> None:
        await conn.read()
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: 100000"
        conn.writer.write(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n\r\n")
        data = b"x" * 50_000
        conn.writer.write(b"c350\r\n" + data + b"\r\n" if chunked else data)
        await conn.writer.drain()
        conn.writer.transport.abort()

    backend = Backend(serve=handler)
    async with running(backend) as proxy:
        c = await Client.connect(proxy.port)
        await c.send(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
        resp = await c.response()
        assert resp.status == 200 and resp.body_len == 50_000  # what arrived was relayed
        assert not resp.complete  # ... then the connection closed: never a clean end
        c.close()
        assert outcomes(proxy) == {Outcome.RESET: 1}


@on_uvloop
async def test_client_abort_mid_upload_aborts_the_upstream_exchange() -> None:
    backend = Backend()
    async with running(backend) as proxy:
        c = await Client.connect(proxy.port)
        await c.send(b"POST /up HTTP/1.1\r\n" + H + b"Content-Length: 1000000\r\n\r\n")
        await c.send_stream(pattern_pieces(100_000))
        assert await until(lambda: len(backend.raw) > 100_000)
        c.writer.transport.abort()
        # the upstream connection is closed by the proxy: the backend sees EOF mid-body
        assert await until(lambda: backend.conns and backend.conns[0].writer.is_closing())
        assert not backend.requests
        assert await until(lambda: settled(proxy) == {Outcome.CLIENT_ABORT: 1})
        # and it is not reused: the next request opens a new upstream connection
        out = await exchange_async(proxy.port, GET_CLOSE)
        assert out.first.status == 200
    assert backend.connections == 2


@on_uvloop
async def test_slow_request_head_is_408() -> None:
    backend = Backend()
    async with running(backend, timeouts=FAST) as proxy:
        c = await Client.connect(proxy.port)
        await c.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        out = await c.read_all(3)
        c.close()
    assert out.first.status == 408 and out.first.header(b"x-lbproxy-error") == b"request_timeout"
    assert backend.connections == 0


@on_uvloop
async def test_client_body_idle_is_408_and_upstream_aborted() -> None:
    backend = Backend()
    async with running(backend, timeouts=FAST) as proxy:
        c = await Client.connect(proxy.port)
        await c.send(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 10\r\n\r\nab")
        out = await c.read_all(3)
        c.close()
        assert out.first.status == 408
        assert await until(lambda: settled(proxy) == {Outcome.CLIENT_ABORT: 1})
    assert not backend.requests  # the backend never saw a complete request


@on_uvloop
async def test_keep_alive_idle_connection_closed_silently() -> None:
    backend = Backend()
    async with running(backend, timeouts=FAST) as proxy:
        c = await Client.connect(proxy.port)
        await c.send(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
        assert (await c.response()).status == 200
        assert await c.closed(3)
        assert c.buffer == b""  # no bytes: a silent close
        c.close()


@on_uvloop
async def test_connect_timeout_is_504() -> None:
    # A listener whose accept queue is full drops SYNs: connect() hangs (Linux).
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(lsock.getsockname())
        fillers.append(s)
    await asyncio.sleep(0.05)
    blackhole = f"127.0.0.1:{lsock.getsockname()[1]}"
    proxy = await InProcProxy(make_config([blackhole], timeouts=FAST)).start()
    try:
        out = await exchange_async(proxy.port, b"GET / HTTP/1.1\r\n" + H + b"\r\n", wait=3)
        assert out.first.status == 504
        assert out.first.header(b"x-lbproxy-error") == b"backend_timeout"
        assert outcomes(proxy) == {Outcome.TIMEOUT: 1}
    finally:
        await proxy.stop()
        for s in fillers:
            s.close()
        lsock.close()


@on_uvloop
async def test_no_response_head_is_504() -> None:
    backend = Backend(serve=never_answers)
    async with running(backend, timeouts=FAST) as proxy:
        out = await exchange_async(proxy.port, b"GET / HTTP/1.1\r\n" + H + b"\r\n", wait=3)
        assert out.first.status == 504
        assert out.first.header(b"x-lbproxy-error") == b"backend_timeout"
        assert outcomes(proxy) == {Outcome.TIMEOUT: 1}


@on_uvloop
async def test_upstream_idle_mid_body_aborts_both_sides() -> None:
    async def handler(conn: Conn) -> None:
        await conn.read()
        conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"y" * 10)
        await conn.writer.drain()
        await conn.reader.read()  # stalls mid-body

    backend = Backend(serve=handler)
    async with running(backend, timeouts=FAST) as proxy:
        c = await Client.connect(proxy.port)
        await c.send(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
        resp = await c.response(timeout=3)
        c.close()
        assert resp.status == 200 and not resp.complete
        assert outcomes(proxy) == {Outcome.TIMEOUT: 1}
        assert await until(lambda: backend.conns[0].writer.is_closing())


BAD_RESPONSES = [
    ("garbage", b"HTTP/1.1 OOPS\r\n\r\n"),
    ("not_http", b"SSH-2.0-OpenSSH\r\n"),
    ("cl_and_te", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ("cl_differ", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"),
    ("te_gzip", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok"),
    ("space_before_colon", b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok"),
    ("obs_fold", b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 2\r\n\r\nok"),
    ("switching_protocols", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"),
    ("http_2", b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
]


@pytest.mark.parametrize("raw", [r for _, r in BAD_RESPONSES], ids=[n for n, _ in BAD_RESPONSES])
@on_uvloop
async def test_malformed_backend_response_is_502_and_connection_discarded(raw: bytes) -> None:
    async def handler(conn: Conn) -> None:
        await conn.read()
        good = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        conn.writer.write(raw if conn.index == 0 else good)
        await conn.writer.drain()
        await conn.reader.read()

    backend = Backend(serve=handler)
    async with running(backend) as proxy:
        out = await exchange_async(proxy.port, b"GET / HTTP/1.1\r\n" + H + b"\r\n", wait=3)
        assert out.first.status == 502
        assert out.first.header(b"x-lbproxy-error") == b"backend_failed"
        out2 = await exchange_async(proxy.port, GET_CLOSE)
        assert out2.first.status == 200
    assert backend.connections == 2


@on_uvloop
async def test_refusal_is_503_with_retry_after() -> None:
    backend = Backend()
    async with running(backend) as proxy:
        proxy.snapshot.clusters["c"].state.set_drain(backend.address, True)
        out = await exchange_async(proxy.port, b"GET / HTTP/1.1\r\n" + H + b"\r\n")
    assert out.first.status == 503
    assert out.first.header(b"x-lbproxy-error") == b"no_healthy_backend"
    assert out.first.header(b"retry-after") == b"1"
    assert backend.connections == 0


@on_uvloop
async def test_drain_finishes_in_flight_with_zero_failures() -> None:
    release = asyncio.Event()
    arrived = 0

    async def handler(conn: Conn) -> None:
        nonlocal arrived
        while True:
            data = await conn.read()
            if not data:
                return
            arrived += 1
            await release.wait()
            conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n" + b"z" * 65536)
            await conn.writer.drain()

    backend = Backend(serve=handler)
    await backend.start()
    # 32 held at once on one backend: over its initial adaptive limit (20), so off here
    no_limits = {"c": {"backends": [backend.address],
                       "adaptive_concurrency": {"enabled": False}}}
    async with running(backend, clusters=no_limits) as proxy:
        idle = await Client.connect(proxy.port)
        clients = [await Client.connect(proxy.port) for _ in range(32)]
        for c in clients:
            await c.send(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
        assert await until(lambda: arrived == 32)
        assert proxy.plane.inflight_requests == 32
        drain = asyncio.ensure_future(proxy.plane.drain(5))
        assert await idle.closed(2)  # idle connections close at once
        release.set()
        responses = [await c.response() for c in clients]
        await asyncio.wait_for(drain, 5)
        assert all(r.status == 200 and r.complete and r.body_len == 65536 for r in responses)
        assert all(r.header(b"connection") == b"close" for r in responses)
        assert all([await c.closed(2) for c in clients])
        assert proxy.plane.active_connections == 0 and proxy.plane.inflight_requests == 0
        assert outcomes(proxy) == {Outcome.OK: 32}
        for c in clients:
            c.close()
        idle.close()


@on_uvloop
async def test_drain_deadline_aborts_what_remains() -> None:
    backend = Backend(serve=never_answers)
    async with running(backend) as proxy:
        c = await Client.connect(proxy.port)
        await c.send(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
        assert await until(lambda: backend.raw)
        await asyncio.wait_for(proxy.plane.drain(0.2), 2)
        assert await c.closed(2)
        assert proxy.plane.active_connections == 0
        assert outcomes(proxy) == {Outcome.CLIENT_ABORT: 1}
        c.close()


@on_uvloop
async def test_stale_pooled_connection_is_retried_for_idempotent_requests() -> None:
    async def handler(conn: Conn) -> None:
        await conn.read()
        conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await conn.writer.drain()
        if conn.index == 0:
            await conn.read()  # the second request arrives ... and the backend closes
            return
        await conn.reader.read()

    backend = Backend(serve=handler)
    async with running(backend) as proxy:
        c = await Client.connect(proxy.port)
        for _ in range(2):
            await c.send(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
            assert (await c.response()).status == 200
        c.close()
        assert outcomes(proxy) == {Outcome.OK: 2}
    assert backend.connections == 2


@on_uvloop
async def test_slow_backend_is_not_a_slow_client() -> None:
    async def handler(conn: Conn) -> None:
        await conn.read()
        await asyncio.sleep(0.8)  # longer than every client-side timeout below
        conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await conn.writer.drain()
        await conn.reader.read()

    client_side = {"request_headers": 0.2, "client_body_idle": 0.2, "client_idle": 0.2}
    backend = Backend(serve=handler)
    async with running(backend, timeouts=client_side) as proxy:
        c = await Client.connect(proxy.port)
        await c.send(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
        resp = await c.response()
        assert resp.status == 200 and resp.body == b"ok"
        assert await c.closed(2) and c.buffer == b""  # then idle-closed, no 408 after it
        c.close()
        assert outcomes(proxy) == {Outcome.OK: 1}


@pytest.mark.parametrize("split", [False, True], ids=["same_read", "later_read"])
@on_uvloop
async def test_bytes_after_a_length_framed_body_drop_the_connection(split: bool) -> None:
    async def handler(conn: Conn) -> None:
        await conn.read()
        conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
        await conn.writer.drain()
        if split:
            await asyncio.sleep(0.05)  # the rest arrives in a later read (raw relay path)
        conn.writer.write(b"56789EXTRA")
        await conn.writer.drain()
        await conn.reader.read()

    backend = Backend(serve=handler)
    async with running(backend) as proxy:
        c = await Client.connect(proxy.port)
        await c.send(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
        resp = await c.response()
        assert resp.status == 200 and resp.body == b"0123456789" and resp.complete
        await c.send(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
        assert (await c.response()).body == b"0123456789"
        c.close()
    assert backend.connections == 2  # the out-of-step connection was not reused


@on_uvloop
async def test_client_abort_mid_download_drops_the_upstream_connection() -> None:
    backend = Backend(lambda req: Answer(size=64 * 1024 * 1024), record_raw=False)
    async with running(backend) as proxy:
        c = await Client.connect(proxy.port)
        await c.send(b"GET /big HTTP/1.1\r\n" + H + b"\r\n")
        await c.reader.readexactly(1 << 20)  # some of the body arrived ...
        c.writer.transport.abort()  # ... and the client is gone
        assert await until(lambda: settled(proxy) == {Outcome.CLIENT_ABORT: 1})
        assert await until(lambda: backend.conns[0].writer.is_closing())
        out = await exchange_async(proxy.port,
                                   b"HEAD / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
        head, _ = parse_response(out.raw, bodiless=True)
        assert head is not None and head.status == 200
    assert backend.connections == 2  # never reused mid-response


@on_uvloop
async def test_backend_dying_mid_upload_is_502() -> None:
    async def handler(conn: Conn) -> None:
        while len(conn.raw) < 200_000:
            if not await conn.read():
                return
        conn.writer.transport.abort()

    backend = Backend(serve=handler)
    async with running(backend) as proxy:
        c = await Client.connect(proxy.port)
        await c.send(b"PUT /up HTTP/1.1\r\n" + H + b"Content-Length: 10000000\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            await c.send_stream(pattern_pieces(1_000_000))
        out = await c.read_all(5)
        c.close()
        assert out.first.status == 502
        assert out.first.header(b"x-lbproxy-error") == b"backend_failed"
        assert outcomes(proxy) == {Outcome.RESET: 1}


@on_uvloop
async def test_early_response_before_the_body_is_sent_is_not_reused() -> None:
    async def handler(conn: Conn) -> None:
        await conn.read()
        if conn.index == 0:  # answer before the request body is through, like a 413
            conn.writer.write(b"HTTP/1.1 413 Too Big\r\nContent-Length: 3\r\n\r\nbig")
        else:
            conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await conn.writer.drain()
        with contextlib.suppress(ConnectionError):
            await conn.reader.read()

    backend = Backend(serve=handler)
    async with running(backend) as proxy:
        c = await Client.connect(proxy.port)
        await c.send(b"PUT /u HTTP/1.1\r\n" + H + b"Content-Length: 1000000\r\n\r\n" + b"x" * 1000)
        resp = await c.response()
        assert resp.status == 413 and resp.body == b"big"
        assert resp.header(b"connection") == b"close"  # the rest of the body is never read
        c.close()
        out = await exchange_async(proxy.port, GET_CLOSE)
        assert out.first.status == 200
    assert backend.connections == 2
