"""Retries through the real data plane: which failures go to another backend, and which never.

Real sockets on 127.0.0.1 (port 0), real uvloop, the real `DataPlane`; backends are the
harness's raw servers, so each test counts exactly which requests reached which backend.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from support.backends import Backend, Conn
from support.inproc import InProcProxy, on_uvloop, stop_all
from support.wire import Client, Request, exchange_async, pattern_pieces, pattern_sha

from lbproxy.balance.gate import Outcome
from lbproxy.control import config

H = b"Host: a\r\n"
GET = b"GET /v/1/seg HTTP/1.1\r\n" + H + b"\r\n"
GET_CLOSE = b"GET /v/1/seg HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
NO_EJECTION = {"enabled": False}  # so every request meets the dead backend first


def _config(addresses: list[str], lead: bool = False, timeouts: dict[str, float] | None = None,
            **cluster: Any) -> config.Config:
    """One cluster of `addresses`; with `lead`, the first one takes the first request (smooth
    weighted round robin orders backends by address, and starts with the heaviest)."""
    backends = [{"address": a, "weight": 2 if lead and i == 0 else 1}
                for i, a in enumerate(addresses)]
    return config.from_dict({
        "listener": {"bind": "127.0.0.1:0"},
        "clusters": {"c": {"policy": "round_robin", "backends": backends, **cluster}},
        "routes": [{"cluster": "c", "hash_on": "path_regex:^/v/([^/]+)/"}],
        "timeouts": timeouts or {},
    })


def _outcomes(proxy: InProcProxy) -> dict[Outcome, int]:
    state = proxy.snapshot.clusters["c"].state
    total = {o: 0 for o in Outcome}
    for slot in state.slots.values():
        for o in Outcome:
            total[o] += state.counters[slot].by_outcome[o]
    return {o: n for o, n in total.items() if n}


async def _reset_after_request(conn: Conn, req: Request) -> bool:
    """Backend `respond`: read (and record) one whole request, then reset (RST), no answer."""
    await conn.finish(req)
    conn.reset()
    return False


async def _start(*backends: Backend) -> list[Backend]:
    return [await b.start() for b in backends]


@on_uvloop
async def test_a_closed_port_among_three_costs_no_client_a_502(refused_address: str):
    good = await _start(Backend(), Backend())
    dead = refused_address
    proxy = await InProcProxy(_config([dead, good[0].address, good[1].address])).start()
    client = await Client.connect(proxy.port)
    try:
        statuses = []
        for _ in range(200):
            await client.send(GET)
            statuses.append((await client.response()).status)
        assert statuses == [200] * 200
        assert sum(len(b.requests) for b in good) == 200
        state = proxy.snapshot.clusters["c"].state
        dead_counters = state.counters[state.slots[dead]]
        # Each connect failure counts (outlier detection ejects it after 5 in a row).
        assert dead_counters.by_outcome[Outcome.CONNECT_FAILED] == 5
        assert state.is_ejected(dead)
        assert state.retries == 5
    finally:
        client.close()
        await stop_all(proxy, good)


@on_uvloop
async def test_maglev_keys_whose_primary_is_dead_go_to_their_second_candidate(
        refused_address: str):
    good = await _start(Backend(), Backend())
    dead = refused_address
    addresses = [dead, good[0].address, good[1].address]
    # A third of the keys retry every time here (no ejection): more than the default budget
    # allows when the dead port happens to own many keys, so the budget is raised.
    proxy = await InProcProxy(_config(addresses, policy="maglev", outlier_detection=NO_EJECTION,
                                retry={"min_retries_per_second": 100.0})).start()
    cluster = proxy.snapshot.clusters["c"]
    maglev: Any = cluster.selector.inner  # under bounded load
    by_slot = {b.slot: b.address for b in cluster.backends}
    try:
        expected: dict[bytes, str] = {}
        for i in range(40):
            key = f"video{i}".encode()
            first, second = maglev.candidates(key, 2)
            expected[key] = by_slot[second if by_slot[first] == dead else first]
        assert dead not in expected.values() and len(set(expected.values())) == 2
        for _ in range(2):  # the same backend both times: the cache stays warm
            for key in expected:
                raw = b"GET /v/%s/seg-1.ts HTTP/1.1\r\n%sConnection: close\r\n\r\n" % (key, H)
                assert (await exchange_async(proxy.port, raw)).first.status == 200
        for b in good:
            for req in b.requests:
                key = req.target.split(b"/")[2]
                assert expected[key] == b.address
        assert sum(len(b.requests) for b in good) == 80
        primary_dead = sum(1 for k in expected
                           if by_slot[maglev.candidates(k, 1)[0]] == dead)
        assert primary_dead > 0 and cluster.state.retries == 2 * primary_dead
    finally:
        await stop_all(proxy, good)


@pytest.mark.parametrize("size", [100 * 1024, 1024 * 1024], ids=["100KiB", "1MiB"])
@on_uvloop
async def test_a_post_body_whose_first_backend_refuses_reaches_another_byte_exact_once(
        size: int, refused_address: str):
    # 1 MiB is past BUFFER_LIMIT: the client is paused, and every byte is still held.
    good = await _start(Backend(), Backend())
    proxy = await InProcProxy(_config([refused_address, *(b.address for b in good)], lead=True,
                                outlier_detection=NO_EJECTION)).start()
    client = await Client.connect(proxy.port)
    try:
        await client.send(b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % size)
        await client.send_stream(pattern_pieces(size, 8192))
        resp = await client.response()
        assert resp.status == 200
        received = [r for b in good for r in b.requests]
        assert len(received) == 1
        assert received[0].body_len == size and received[0].body_sha == pattern_sha(size)
        assert _outcomes(proxy) == {Outcome.CONNECT_FAILED: 1, Outcome.OK: 1}
    finally:
        client.close()
        await stop_all(proxy, good)


@on_uvloop
async def test_a_non_idempotent_post_reset_after_the_full_request_is_not_retried():
    backends = await _start(Backend(respond=_reset_after_request),
                            Backend(respond=_reset_after_request))
    proxy = await InProcProxy(_config([b.address for b in backends])).start()
    try:
        raw = b"POST /orders HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello"
        out = await exchange_async(proxy.port, raw)
        assert out.first.status == 502
        assert out.first.header(b"x-lbproxy-error") == b"backend_failed"
        assert sum(len(b.requests) for b in backends) == 1  # exactly one reached a backend
        assert _outcomes(proxy) == {Outcome.RESET: 1}
    finally:
        await stop_all(proxy, backends)


@on_uvloop
async def test_an_idempotent_get_reset_before_the_response_is_retried_once_elsewhere():
    resetting = await Backend(respond=_reset_after_request).start()
    good = await Backend().start()
    proxy = await InProcProxy(_config([resetting.address, good.address], lead=True)).start()
    try:
        out = await exchange_async(proxy.port, GET_CLOSE)
        assert out.first.status == 200
        assert (len(resetting.requests), len(good.requests)) == (1, 1)
        assert _outcomes(proxy) == {Outcome.RESET: 1, Outcome.OK: 1}
    finally:
        await stop_all(proxy, [resetting, good])


@on_uvloop
async def test_an_idempotent_put_is_resent_with_its_body_and_only_once():
    body = bytes(range(256)) * 40
    resetting = await _start(*(Backend(respond=_reset_after_request) for _ in range(3)))
    proxy = await InProcProxy(_config([b.address for b in resetting])).start()
    try:
        raw = b"PUT /v/1/x HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % len(body) + body
        assert (await exchange_async(proxy.port, raw)).first.status == 502  # every backend resets
        received = [r for b in resetting for r in b.requests]
        assert len(received) == 2  # the first attempt and one retry, never a third
        assert all(r.method == b"PUT" and r.body == body for r in received)
        assert _outcomes(proxy) == {Outcome.RESET: 2}
    finally:
        await stop_all(proxy, resetting)


@on_uvloop
async def test_retries_disabled_a_refused_connect_is_502_as_before(refused_address: str):
    good = await Backend().start()
    proxy = await InProcProxy(_config([refused_address, good.address], lead=True,
                                retry={"attempts": 0})).start()
    try:
        out = await exchange_async(proxy.port, GET_CLOSE)
        assert out.first.status == 502
        assert out.first.header(b"x-lbproxy-error") == b"backend_connect_failed"
        assert not good.requests
    finally:
        await stop_all(proxy, [good])


@on_uvloop
async def test_past_the_retry_budget_the_connect_failure_is_502(refused_address: str):
    good = await Backend().start()
    no_budget = {"budget_percent": 0.0, "min_retries_per_second": 0.0}
    proxy = await InProcProxy(_config([refused_address, good.address], lead=True,
                                retry=no_budget)).start()
    try:
        out = await exchange_async(proxy.port, GET_CLOSE)
        assert out.first.status == 502
        assert out.first.header(b"x-lbproxy-error") == b"backend_connect_failed"
        assert not good.requests
        assert proxy.snapshot.clusters["c"].state.retries == 0
    finally:
        await stop_all(proxy, [good])


@on_uvloop
async def test_a_backend_dying_mid_body_is_never_retried():
    async def dies_mid_body(conn: Conn, req: Request) -> bool:
        await conn.finish(req)
        conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 50_000)
        await conn.writer.drain()
        conn.writer.transport.abort()
        return False

    dying = await Backend(respond=dies_mid_body).start()
    good = await Backend().start()
    proxy = await InProcProxy(_config([dying.address, good.address], lead=True)).start()
    client = await Client.connect(proxy.port)
    try:
        await client.send(GET)
        resp = await client.response()
        assert resp.status == 200 and resp.body_len == 50_000 and not resp.complete
        assert not good.requests
        assert _outcomes(proxy) == {Outcome.RESET: 1}
    finally:
        client.close()
        await stop_all(proxy, [dying, good])


@on_uvloop
async def test_a_get_meeting_two_stale_pooled_connections_still_goes_elsewhere():
    async def one_answer_per_connection(conn: Conn, req: Request) -> bool:
        await conn.finish(req)
        if len(conn.requests) > 1:
            return False  # the next request on this connection: dropped unanswered
        conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await conn.writer.drain()
        return True

    stale = await Backend(respond=one_answer_per_connection).start()
    good = await Backend().start()
    proxy = await InProcProxy(_config([stale.address, good.address], policy="maglev",
                                balance_factor=0, outlier_detection=NO_EJECTION)).start()
    cluster = proxy.snapshot.clusters["c"]
    selector: Any = cluster.selector  # Maglev (balance_factor 0: no bounded-load wrapper)
    stale_backend = cluster.backend(stale.address)
    assert stale_backend is not None
    key = next(b"k%d" % i for i in range(100)
               if stale_backend.slot == selector.candidates(b"k%d" % i, 1)[0])
    get = b"GET /v/%s/seg HTTP/1.1\r\n%s\r\n" % (key, H)
    clients = [await Client.connect(proxy.port) for _ in range(2)]
    try:
        # Two requests at once: two upstream connections to `stale`, both pooled after.
        for c in clients:
            await c.send(get)
        assert [(await c.response()).status for c in clients] == [200, 200]
        assert stale.connections == 2
        # The next request meets both (now stale) pooled connections, one after the other:
        # the keep-alive race's resend, then the idempotent retry on another backend.
        await clients[0].send(get)
        assert (await clients[0].response()).status == 200
        assert len(good.requests) == 1
    finally:
        for c in clients:
            c.close()
        await stop_all(proxy, [stale, good])


@on_uvloop
async def test_a_connect_timeout_is_retried_on_another_backend():
    # A listener that never accepts, its accept queue full: further SYNs are dropped, so
    # a connect to it hangs until the proxy's connect timeout.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(blackhole.getsockname())
        fillers.append(s)
    await asyncio.sleep(0.05)
    good = await Backend().start()
    address = f"127.0.0.1:{blackhole.getsockname()[1]}"
    proxy = await InProcProxy(_config([address, good.address], lead=True,
                                timeouts={"connect": 0.3})).start()
    try:
        out = await exchange_async(proxy.port, GET_CLOSE)
        assert out.first.status == 200
        assert len(good.requests) == 1
        assert _outcomes(proxy) == {Outcome.TIMEOUT: 1, Outcome.OK: 1}
    finally:
        await stop_all(proxy, [good])
        for s in [*fillers, blackhole]:
            s.close()
