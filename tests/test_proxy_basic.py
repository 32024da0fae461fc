"""Data plane round trips: bodies, framing, headers, keep-alive, pipelining, 100-continue."""

from __future__ import annotations

import asyncio

import pytest
from support.backends import Answer, Backend, Conn
from support.inproc import InProcProxy, make_config, on_uvloop, running
from support.wire import Client, Request, exchange_async, pattern, pattern_pieces, pattern_sha

SIZES = [0, 1, 64 * 1024]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("chunked", [False, True], ids=["fixed", "chunked"])
@on_uvloop
async def test_download_round_trip_is_byte_exact(size: int, chunked: bool) -> None:
    backend = Backend(lambda req: Answer(size=size, chunked=chunked))
    async with running(backend) as proxy:
        c = await Client.connect(proxy.port)
        await c.send(b"GET /d HTTP/1.1\r\nHost: a\r\n\r\n")
        resp = await c.response()
        c.close()
    assert resp.status == 200 and resp.complete
    assert (resp.body_len, resp.body_sha) == (size, pattern_sha(size))
    if chunked:
        assert resp.header(b"transfer-encoding") == b"chunked"
    else:
        assert resp.header(b"content-length") == b"%d" % size


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("chunked", [False, True], ids=["fixed", "chunked"])
@on_uvloop
async def test_upload_round_trip_is_byte_exact(size: int, chunked: bool) -> None:
    backend = Backend()
    async with running(backend) as proxy:
        c = await Client.connect(proxy.port)
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % size
        await c.send(b"POST /upload HTTP/1.1\r\nHost: a\r\n" + framing + b"\r\n\r\n")
        await c.send_stream(pattern_pieces(size, 7000), chunked=chunked)
        resp = await c.response()
        c.close()
    assert resp.status == 200
    (req,) = backend.requests
    assert (req.body_len, req.body_sha) == (size, pattern_sha(size))
    # Re-framed by the proxy: chunked stays chunked, a length stays a length.
    if chunked:
        assert req.header(b"transfer-encoding") == b"chunked"
        assert req.header(b"content-length") is None
    else:
        assert req.header(b"content-length") == b"%d" % size


@on_uvloop
async def test_headers_added_and_hop_by_hop_removed() -> None:
    backend = Backend(lambda req: Answer(headers=[
        (b"Connection", b"x-secret-hop"), (b"X-Secret-Hop", b"1"), (b"Keep-Alive", b"timeout=5"),
        (b"Upgrade", b"h2c"), (b"Proxy-Connection", b"keep-alive"), (b"Trailer", b"x"),
        (b"Via", b"1.1 origin"), (b"X-Kept", b"yes"),
    ]))
    async with running(backend) as proxy:
        c = await Client.connect(proxy.port)
        await c.send(
            b"GET /p?q=1 HTTP/1.1\r\nHost: example.test\r\nConnection: keep-alive, x-drop\r\n"
            b"X-Drop: 1\r\nKeep-Alive: 300\r\nTE: trailers\r\nTrailer: x\r\n"
            b"Proxy-Connection: keep-alive\r\nX-Forwarded-For: 10.0.0.1\r\nVia: 1.0 edge\r\n"
            b"X-Request-Id: abc.DEF-12:3_\r\nX-Other: kept\r\n\r\n"
        )
        resp = await c.response()
        c.close()
    (req,) = backend.requests
    names = {n.lower() for n, _ in req.headers}
    for hop in (b"connection", b"x-drop", b"keep-alive", b"te", b"trailer", b"proxy-connection"):
        assert hop not in names
    assert req.target == b"/p?q=1"
    assert req.header(b"host") == b"example.test"
    assert req.header(b"x-other") == b"kept"
    assert req.header(b"x-forwarded-for") == b"10.0.0.1, 127.0.0.1"
    assert req.header(b"x-forwarded-proto") == b"http"
    assert req.header(b"via") == b"1.0 edge, 1.1 lbproxy"
    assert req.header(b"x-request-id") == b"abc.DEF-12:3_"
    rnames = {n.lower() for n, _ in resp.headers}
    for hop in (b"x-secret-hop", b"keep-alive", b"upgrade", b"proxy-connection", b"trailer"):
        assert hop not in rnames
    assert resp.header(b"connection") is None
    assert resp.header(b"via") == b"1.1 origin, 1.1 lbproxy"
    assert resp.header(b"x-kept") == b"yes"


@pytest.mark.parametrize("rid", [b"", b"bad id", b"x" * 129, b"caf\xc3\xa9"])
@on_uvloop
async def test_invalid_request_id_is_replaced(rid: bytes) -> None:
    backend = Backend()
    async with running(backend) as proxy:
        await exchange_async(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: " + rid
                             + b"\r\nConnection: close\r\n\r\n")
        await exchange_async(proxy.port,
                             b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    ids = [r.header(b"x-request-id") for r in backend.requests]
    assert len(ids) == 2 and ids[0] != ids[1]
    for got in ids:
        assert got is not None and got != rid and len(got) == 24
        assert all(ch in b"0123456789abcdef" for ch in got)


@on_uvloop
async def test_keep_alive_reuses_upstream_connection() -> None:
    backend = Backend()
    async with running(backend) as proxy:
        c = await Client.connect(proxy.port)
        for i in range(20):
            await c.send(b"GET /k%d HTTP/1.1\r\nHost: a\r\n\r\n" % i)
            resp = await c.response()
            assert resp.status == 200 and resp.body == b"ok"
        c.close()
        # a second client reuses the pooled connection too
        c2 = await Client.connect(proxy.port)
        await c2.send(b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await c2.response()).status == 200
        c2.close()
    assert len(backend.requests) == 21
    assert backend.connections == 1


@on_uvloop
async def test_upstream_connection_not_reused_after_connection_close() -> None:
    backend = Backend(lambda req: Answer(headers=[(b"Connection", b"close")]))
    async with running(backend) as proxy:
        c = await Client.connect(proxy.port)
        for _ in range(3):
            await c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            resp = await c.response()
            assert resp.status == 200
            assert resp.header(b"connection") is None  # the client's connection stays open
        c.close()
    assert backend.connections == 3


@on_uvloop
async def test_pipelined_requests_answered_in_order() -> None:
    backend = Backend(lambda req: Answer(body=req.target + b"|" + req.body))
    async with running(backend) as proxy:
        c = await Client.connect(proxy.port)
        batch = b"".join(
            b"POST /p%d HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nb%02d" % (i, i)
            if i % 2 else b"GET /p%d HTTP/1.1\r\nHost: a\r\n\r\n" % i
            for i in range(40)
        )
        await c.send(batch)
        bodies = [(await c.response()).body for _ in range(40)]
        c.close()
    assert bodies == [b"/p%d|" % i + (b"b%02d" % i if i % 2 else b"") for i in range(40)]
    assert [r.target for r in backend.requests] == [b"/p%d" % i for i in range(40)]


@on_uvloop
async def test_head_204_304_have_no_body() -> None:
    def respond(req: Request) -> Answer:
        if req.target == b"/204":
            return Answer(status=204, body=b"")
        if req.target == b"/304":
            return Answer(status=304, body=b"", headers=[(b"ETag", b'"x"')])
        return Answer(size=1000)

    backend = Backend(respond)
    async with running(backend) as proxy:
        c = await Client.connect(proxy.port)
        await c.send(b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await c.response(head_request=True)
        assert head.status == 200 and head.header(b"content-length") == b"1000"
        assert head.body_len == 0
        await c.send(b"GET /204 HTTP/1.1\r\nHost: a\r\n\r\n")
        r204 = await c.response()
        assert r204.status == 204 and r204.header(b"content-length") is None
        await c.send(b"GET /304 HTTP/1.1\r\nHost: a\r\n\r\n")
        r304 = await c.response()
        assert r304.status == 304 and r304.body_len == 0
        # the connection is still in sync: a normal request after them works
        await c.send(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        after = await c.response()
        assert after.status == 200 and after.body_len == 1000
        c.close()
    assert backend.connections == 1  # and the upstream connection survived HEAD


@on_uvloop
async def test_range_request_and_206_pass_through() -> None:
    def respond(req: Request) -> Answer:
        assert req.header(b"range") == b"bytes=10-19"
        return Answer(status=206, body=bytes(range(10, 20)),
                     headers=[(b"Content-Range", b"bytes 10-19/256")])

    backend = Backend(respond)
    async with running(backend) as proxy:
        out = await exchange_async(proxy.port, b"GET /v HTTP/1.1\r\nHost: a\r\n"
                                   b"Range: bytes=10-19\r\nConnection: close\r\n\r\n")
    assert out.first.status == 206
    assert out.first.header(b"content-range") == b"bytes 10-19/256"
    assert out.raw.endswith(bytes(range(10, 20)))


@on_uvloop
async def test_every_segment_of_a_video_reaches_one_backend() -> None:
    backends = [await Backend().start() for _ in range(3)]
    maglev = {"c": {"policy": "maglev", "balance_factor": 0,
                    "backends": [b.address for b in backends]}}
    route = [{"path_prefix": "/", "cluster": "c", "hash_on": "path_regex:^/v/([^/]+)/"}]
    async with running(*backends, clusters=maglev, routes=route) as proxy:
        c = await Client.connect(proxy.port)
        for video in range(12):
            for seg in range(6):
                await c.send(b"GET /v/vid%d/seg%d.ts HTTP/1.1\r\nHost: a\r\n\r\n" % (video, seg))
                assert (await c.response()).status == 200
        c.close()
    owners: dict[bytes, set[int]] = {}
    for i, b in enumerate(backends):
        for r in b.requests:
            owners.setdefault(r.target.split(b"/")[2], set()).add(i)
    assert len(owners) == 12
    assert all(len(s) == 1 for s in owners.values())
    assert len({next(iter(s)) for s in owners.values()}) > 1  # videos spread over backends


@on_uvloop
async def test_expect_100_continue_sends_exactly_one_100() -> None:
    backend = Backend()
    async with running(backend) as proxy:
        c = await Client.connect(proxy.port)
        await c.send(b"PUT /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        first = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), 5)
        assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert not backend.requests
        await c.send(b"hello")
        resp = await c.response()
        assert resp.status == 200
        rest = await c.closed(0.2)
        c.close()
    assert not rest and b"100 Continue" not in c.buffer
    (req,) = backend.requests
    assert req.body == b"hello" and req.header(b"expect") is None


@on_uvloop
async def test_backend_100_is_not_relayed_twice() -> None:
    async def handler(conn: Conn) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await conn.read()
        conn.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while not data.endswith(b"hello"):
            data += await conn.read()
        conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await conn.writer.drain()
        await conn.reader.read()

    backend = Backend(serve=handler)
    async with running(backend) as proxy:
        c = await Client.connect(proxy.port)
        await c.send(b"PUT /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        assert await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), 5) == (
            b"HTTP/1.1 100 Continue\r\n\r\n")
        await c.send(b"hello")
        resp = await c.response()
        c.close()
    assert resp.status == 200 and resp.body == b"ok" and c.interim == []


@on_uvloop
async def test_http10_client_gets_no_100_and_close_delimited_body() -> None:
    backend = Backend(lambda req: Answer(size=3000, chunked=True))
    async with running(backend) as proxy:
        out = await exchange_async(proxy.port, b"POST /x HTTP/1.0\r\nContent-Length: 2\r\n"
                                   b"Expect: 100-continue\r\n\r\nhi")
    assert out.raw.startswith(b"HTTP/1.1 200 ")
    assert b"100 Continue" not in out.raw
    assert out.first.header(b"transfer-encoding") is None
    assert out.first.header(b"connection") == b"close"
    assert out.raw.split(b"\r\n\r\n", 1)[1] == pattern(3000)
    assert backend.requests[0].header(b"via") == b"1.0 lbproxy"


@on_uvloop
async def test_unknown_expectation_is_417_and_nothing_forwarded() -> None:
    backend = Backend()
    async with running(backend) as proxy:
        out = await exchange_async(proxy.port, b"PUT / HTTP/1.1\r\nHost: a\r\n"
                                   b"Content-Length: 1\r\nExpect: fancy\r\n\r\nx")
    assert out.first.status == 417
    assert out.first.header(b"x-lbproxy-error") == b"expectation_failed"
    assert backend.connections == 0


@on_uvloop
async def test_no_route_is_404_and_keeps_the_connection() -> None:
    backend = Backend()
    async with running(backend, routes=[{"path_prefix": "/only", "cluster": "c"}]) as proxy:
        c = await Client.connect(proxy.port)
        await c.send(b"GET /elsewhere HTTP/1.1\r\nHost: a\r\n\r\n")
        resp = await c.response()
        assert resp.status == 404 and resp.header(b"x-lbproxy-error") == b"no_route"
        await c.send(b"GET /only/x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await c.response()).status == 200
        c.close()
    assert [r.target for r in backend.requests] == [b"/only/x"]


@on_uvloop
async def test_absolute_form_target_becomes_origin_form() -> None:
    backend = Backend()
    async with running(backend) as proxy:
        await exchange_async(proxy.port, b"GET http://Video.Example:8080/a/b?c=d HTTP/1.1\r\n"
                             b"Host: other\r\nConnection: close\r\n\r\n")
    (req,) = backend.requests
    assert req.target == b"/a/b?c=d"
    assert req.header(b"host") == b"Video.Example:8080"


@on_uvloop
async def test_options_asterisk_is_valid_but_matches_no_prefix_route() -> None:
    backend = Backend()
    async with running(backend) as proxy:
        c = await Client.connect(proxy.port)
        await c.send(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
        resp = await c.response()
        c.close()
    # not 400: asterisk-form is valid for OPTIONS; "*" has no "/" prefix, so no route
    assert resp.status == 404


@on_uvloop
async def test_chunk_extensions_and_trailers_are_dropped_both_ways() -> None:
    async def handler(conn: Conn) -> None:
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            data += await conn.read()
        conn.writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                          b"Trailer: X-Sum\r\n\r\n3;note=1\r\nabc\r\n0\r\nX-Sum: 42\r\n\r\n")
        await conn.writer.drain()
        await conn.reader.read()

    backend = Backend(serve=handler)
    async with running(backend) as proxy:
        c = await Client.connect(proxy.port)
        await c.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                     b"Trailer: X-Check\r\n\r\n4;ext=\"v\"\r\nwxyz\r\n0\r\nX-Check: 1\r\n\r\n")
        resp = await c.response()
        raw_after = await c.closed(0.2)
        c.close()
    sent = bytes(backend.raw)
    assert sent.endswith(b"\r\n\r\n4\r\nwxyz\r\n0\r\n\r\n")  # re-chunked, no ext, no trailer
    assert b"x-check" not in sent.lower() and b"trailer" not in sent.lower()
    assert resp.status == 200 and resp.body == b"abc" and resp.complete
    assert resp.header(b"trailer") is None
    assert not raw_after

    async with running(Backend(serve=handler)) as proxy:
        out = await exchange_async(proxy.port, b"POST / HTTP/1.1\r\nHost: a\r\n"
                                   b"Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   b"0\r\n\r\n")
    assert out.raw.endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n")  # the client sees no trailer


@on_uvloop
async def test_http10_keep_alive_on_request() -> None:
    backend = Backend()
    async with running(backend) as proxy:
        c = await Client.connect(proxy.port)
        for _ in range(3):
            await c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            resp = await c.response()
            assert resp.status == 200 and resp.body == b"ok"
            assert resp.header(b"connection") == b"keep-alive"
        await c.send(b"GET / HTTP/1.0\r\n\r\n")  # without keep-alive: close after it
        assert (await c.response()).header(b"connection") == b"close"
        assert await c.closed(2)
        c.close()


@on_uvloop
async def test_pipelining_reads_ahead_only_a_bounded_amount() -> None:
    from lbproxy.proxy.client import PIPELINE_LIMIT, PIPELINE_SLICE

    release = asyncio.Event()

    async def handler(conn: Conn) -> None:
        while await conn.read():
            await release.wait()
            conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await conn.writer.drain()

    backend = Backend(serve=handler)
    request = b"GET /p HTTP/1.1\r\nHost: a\r\n\r\n"
    async with running(backend) as proxy:
        c = await Client.connect(proxy.port)
        c.writer.transport.set_write_buffer_limits(high=1 << 22)
        c.writer.write(request * 3000)  # ~84 KiB of pipelined requests
        await asyncio.sleep(0.3)
        (conn,) = proxy.plane._connections
        parsed_ahead = len(conn._queue)
        assert parsed_ahead <= PIPELINE_LIMIT + PIPELINE_SLICE // len(request)
        release.set()
        for _ in range(3000):
            assert (await c.response()).status == 200
        c.close()
    assert backend.connections == 1


@on_uvloop
async def test_tls_listener_sets_x_forwarded_proto_https() -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    backend = await Backend().start()
    proxy = InProcProxy(make_config([backend.address]))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(proxy.plane.protocol_factory, "127.0.0.1", 0,
                                      ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    finally:
        server.close()
        await proxy.plane.drain(0.5)
        await backend.stop()
    assert raw.split(b" ", 2)[1] == b"200"
    assert backend.requests[0].header(b"x-forwarded-proto") == b"https"


@on_uvloop
async def test_request_after_a_length_body_in_the_same_read_is_parsed() -> None:
    backend = Backend(lambda req: Answer(body=req.target + b"|%d" % req.body_len))
    async with running(backend) as proxy:
        c = await Client.connect(proxy.port)
        await c.send(b"PUT /a HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10)
        await asyncio.sleep(0.05)  # the rest of the body arrives in a later read
        await c.send(b"y" * 99_990 + b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n")
        first, second = await c.response(), await c.response()
        c.close()
    assert (first.body, second.body) == (b"/a|100000", b"/b|0")
    assert backend.requests[0].body == b"x" * 10 + b"y" * 99_990
