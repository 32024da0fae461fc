"""Black-box conformance: headers and HTTP/1.x behaviour of `lbproxy run` with real clients.

curl, http.client, aiohttp and raw sockets against one proxy process and recording
backends: forwarding headers (RFC 9110 §7.6), hop-by-hop removal both ways, keep-alive,
pipelining, HTTP/1.0, 100-continue, bodiless responses, Range, byte-exact streaming,
truncation on failure, and video hash affinity.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import io
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from support.backends import Backends
from support.configs import config_doc
from support.subproc import LbproxyProcess, curl, lbproxy_running
from support.waiting import wait_until
from support.wire import Response, exchange, parse_response, pattern

pytestmark = pytest.mark.timeout(90)

H = b"Host: example.test\r\n"
VIDEO_BACKENDS = ["v1", "v2", "v3"]


@pytest.fixture(scope="module")
def backends() -> Iterator[Backends]:
    b = Backends(["main", *VIDEO_BACKENDS])
    yield b
    b.close()


@pytest.fixture(scope="module")
def proxy(backends: Backends, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[LbproxyProcess]:
    # Some tests make "main" fail on purpose; passive ejection must not make the outcome
    # of later tests depend on their order.
    no_ejection = {"enabled": False}
    # Nor may overload control: on a loaded 2-core machine the uncompiled proxy is itself
    # the bottleneck of a 50-connection burst, its adaptive limits read that as backend
    # latency, and the queue sheds (503 overloaded) what these tests send to check HTTP
    # conformance. Shedding is tested in test_overload_*.
    off = {"outlier_detection": no_ejection, "adaptive_concurrency": {"enabled": False}}
    doc = config_doc(
        {"main": {"policy": "round_robin", "backends": [backends["main"].address], **off},
         "videos": {"policy": "maglev",
                    "backends": [backends[n].address for n in VIDEO_BACKENDS], **off}},
        [{"path_prefix": "/v/", "cluster": "videos", "hash_on": "path_regex:^/v/([^/]+)/"},
         {"path_prefix": "/r/", "cluster": "videos", "host": "special.test"},
         {"path_prefix": "/r/", "cluster": "videos", "methods": ["PUT"]},
         {"path_prefix": "/r/", "cluster": "videos", "headers": {"x-tenant": "blue"}},
         {"path_prefix": "/q/", "cluster": "videos", "hash_on": "query:video"},
         {"path_prefix": "/h/", "cluster": "videos", "hash_on": "header:x-video"},
         {"path_prefix": "/c/", "cluster": "videos", "hash_on": "cookie:vid"},
         {"path_prefix": "/", "cluster": "main"}],
        timeouts={"upstream_idle": 5.0},
    )
    with lbproxy_running(doc, tmp_path_factory.mktemp("protocol") / "lbproxy.toml") as run:
        yield run


def echo(proxy: LbproxyProcess, head: bytes = b"", target: bytes = b"/echo") -> dict:
    """GET `target` with extra `head` lines; the backend's JSON view of what it received."""
    reply = exchange(proxy.port, b"GET " + target + b" HTTP/1.1\r\n" + H + head
                     + b"Connection: close\r\n\r\n")
    resp = reply.first
    assert resp.status == 200, reply.raw
    return json.loads(resp.body)


def seen(doc: dict, name: str) -> list[str]:
    """Values of header `name` as the backend received it."""
    return [v for n, v in doc["headers"] if n.lower() == name]


# -- headers the proxy adds and removes ---------------------------------------------------


def test_forwarding_headers_are_added(proxy) -> None:
    doc = echo(proxy)
    assert seen(doc, "x-forwarded-for") == ["127.0.0.1"]
    assert seen(doc, "x-forwarded-proto") == ["http"]
    assert seen(doc, "via") == ["1.1 lbproxy"]
    assert seen(doc, "host") == ["example.test"]
    (rid,) = seen(doc, "x-request-id")
    assert 8 <= len(rid) <= 128


def test_forwarding_headers_are_appended_to_the_clients(proxy) -> None:
    doc = echo(proxy, b"X-Forwarded-For: 203.0.113.7\r\nVia: 1.0 edge\r\n")
    assert seen(doc, "x-forwarded-for") == ["203.0.113.7, 127.0.0.1"]
    assert seen(doc, "via") == ["1.0 edge, 1.1 lbproxy"]


def test_client_x_forwarded_proto_is_not_trusted(proxy) -> None:
    doc = echo(proxy, b"X-Forwarded-Proto: https\r\n")
    assert seen(doc, "x-forwarded-proto") == ["http"]


def test_valid_request_id_is_kept(proxy) -> None:
    doc = echo(proxy, b"X-Request-Id: req-42.abc:DEF_1\r\n")
    assert seen(doc, "x-request-id") == ["req-42.abc:DEF_1"]


@pytest.mark.parametrize("rid", [b"has space", b"x" * 200, b"semi;colon", b"",
                                 b"quote\"d", b"two\r\nX-Request-Id: ids"])
def test_invalid_request_id_is_replaced(proxy, rid) -> None:
    doc = echo(proxy, b"X-Request-Id: " + rid + b"\r\n")
    (got,) = seen(doc, "x-request-id")
    assert got.encode() != rid and got and all(c.isalnum() for c in got)


def test_each_request_gets_its_own_generated_id(proxy) -> None:
    ids = {seen(echo(proxy), "x-request-id")[0] for _ in range(5)}
    assert len(ids) == 5


def test_hop_by_hop_request_headers_are_not_forwarded(proxy) -> None:
    doc = echo(proxy, b"Connection: keep-alive, X-Private\r\nX-Private: secret\r\n"
               b"Keep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\n"
               b"Proxy-Connection: keep-alive\r\nX-Kept: yes\r\n")
    names = {n.lower() for n, _ in doc["headers"]}
    for hop in ("x-private", "keep-alive", "te", "trailer", "upgrade", "proxy-connection"):
        assert hop not in names
    # The proxy's own Connection (if any) must not carry the client's tokens.
    assert all("x-private" not in v.lower() for v in seen(doc, "connection"))
    assert seen(doc, "x-kept") == ["yes"]


def test_hop_by_hop_response_headers_are_not_forwarded(proxy) -> None:
    reply = exchange(proxy.port, b"GET /hop HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    resp = reply.first
    assert resp.status == 200 and resp.body == b"hop"
    for hop in (b"x-private", b"keep-alive", b"trailer", b"upgrade", b"proxy-connection"):
        assert resp.header(hop) is None, hop
    assert b"x-private" not in resp.tokens(b"connection")
    assert resp.header(b"x-kept") == b"yes"
    assert b"lbproxy" in (resp.header(b"via") or b"")


# -- connection management ------------------------------------------------------------------


def test_keep_alive_with_http_client_reuses_both_connections(proxy, backends) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        upstream = set()
        for i in range(5):
            conn.request("GET", f"/echo/ka/{i}")
            if i == 0:
                sock = conn.sock
            resp = conn.getresponse()
            doc = json.loads(resp.read())
            assert resp.status == 200 and doc["target"] == f"/echo/ka/{i}"
            assert conn.sock is sock, "the proxy closed a keep-alive connection"
            upstream.add(doc["conn"])
        assert len(upstream) == 1, "the upstream connection was not reused"
    finally:
        conn.close()


def test_pipelined_requests_are_answered_in_order(proxy) -> None:
    reqs = b"".join(b"GET /echo/p/%d HTTP/1.1\r\n" % i + H + b"\r\n" for i in range(3))
    reply = exchange(proxy.port, reqs + b"GET /echo/p/last HTTP/1.1\r\n" + H
                     + b"Connection: close\r\n\r\n")
    targets = [json.loads(r.body)["target"] for r in reply.responses()]
    assert targets == ["/echo/p/0", "/echo/p/1", "/echo/p/2", "/echo/p/last"]
    assert reply.closed


def test_http10_client_gets_a_framed_response_and_a_close(proxy) -> None:
    reply = exchange(proxy.port, b"GET /echo HTTP/1.0\r\n" + H + b"\r\n")
    resp = reply.first
    assert reply.raw.startswith(b"HTTP/1.")
    assert resp.status == 200 and json.loads(resp.body)["target"] == "/echo"
    assert reply.closed


def test_http10_chunked_response_is_close_delimited(proxy) -> None:
    reply = exchange(proxy.port, b"GET /bytes/70000?chunked HTTP/1.0\r\n" + H + b"\r\n")
    resp = reply.first
    assert resp.header(b"transfer-encoding") is None  # HTTP/1.0 has no chunked (RFC 9112 §7)
    assert reply.closed and resp.body == pattern(70000)


def test_http10_keep_alive_is_honoured_when_asked(proxy) -> None:
    one = b"GET /echo HTTP/1.0\r\n" + H + b"Connection: keep-alive\r\n\r\n"
    reply = exchange(proxy.port, [one, b"GET /echo/2 HTTP/1.0\r\n" + H + b"\r\n"], pause=0.3)
    first, second = reply.responses()
    assert b"keep-alive" in first.tokens(b"connection")
    assert json.loads(second.body)["target"] == "/echo/2"
    assert reply.closed


def test_expect_100_continue_with_curl_sends_exactly_one_100(proxy, backends) -> None:
    body = pattern(5000)
    out = curl("-v", "-H", "Expect: 100-continue", "--data-binary", "@-",
               f"{proxy.url}/echo/expect", data=body)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count(b"< HTTP/1.1 100") == 1, out.stderr
    doc = json.loads(out.stdout)
    assert doc["body_len"] == 5000 and doc["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert not [n for n, _ in doc["headers"] if n.lower() == "expect"]


def test_head_204_304_have_no_body(proxy) -> None:
    raw = (b"HEAD /echo HTTP/1.1\r\n" + H + b"\r\n"
           b"GET /status/204 HTTP/1.1\r\n" + H + b"\r\n"
           b"GET /status/304 HTTP/1.1\r\n" + H + b"\r\n"
           b"GET /echo/after HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    reply = exchange(proxy.port, raw)
    head, rest = parse_response(reply.raw, bodiless=True)
    assert head is not None and head.status == 200
    assert int(head.header(b"content-length") or -1) > 0  # HEAD keeps the length
    no_content, rest = parse_response(rest)
    not_modified, rest = parse_response(rest)
    after, rest = parse_response(rest)
    assert no_content is not None and no_content.status == 204
    assert no_content.header(b"content-length") is None
    assert no_content.header(b"transfer-encoding") is None
    assert not_modified is not None and not_modified.status == 304
    assert not_modified.header(b"etag") == b'"e1"'
    # Any body bytes after the bodiless responses would shift this one.
    assert after is not None and json.loads(after.body)["target"] == "/echo/after"
    assert rest == b""


def test_range_request_passes_206_through(proxy) -> None:
    out = curl("-i", "-r", "10-19", f"{proxy.url}/range")
    assert out.returncode == 0, out.stderr
    resp, _ = parse_response(out.stdout)
    assert resp is not None and resp.status == 206
    assert resp.header(b"content-range") == b"bytes 10-19/1000"
    assert resp.body == pattern(1000)[10:20]


@pytest.mark.parametrize("how", [["-T", "-"], ["-H", "Transfer-Encoding: chunked",
                                               "--data-binary", "@-"]])
def test_chunked_upload_with_curl_is_byte_exact(proxy, how) -> None:
    body = pattern(3 << 20)
    out = curl(*how, "-H", "Expect:", f"{proxy.url}/echo/upload", data=body)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["chunked"] is True
    assert doc["body_len"] == len(body)
    assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.slow
def test_64mib_download_with_curl_is_byte_exact(proxy, tmp_path) -> None:
    size = 64 << 20
    dest = tmp_path / "big"
    out = curl("-o", str(dest), "-w", "%{http_code} %{size_download}",
               f"{proxy.url}/bytes/{size}", timeout=120)
    assert out.returncode == 0 and out.stdout == f"200 {size}".encode(), out.stderr
    want = hashlib.sha256(pattern(size)).hexdigest()
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == want


async def test_chunked_download_with_aiohttp_is_byte_exact(proxy) -> None:
    size = 5 << 20
    async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}/bytes/{size}?chunked") as r:
        assert r.status == 200 and r.headers.get("Transfer-Encoding") == "chunked"
        got = await r.read()
    assert got == pattern(size)


@pytest.mark.parametrize("kind", ["cl", "chunked"])
def test_backend_dying_mid_body_gives_curl_a_partial_file(proxy, kind) -> None:
    out = curl("-o", "/dev/null", f"{proxy.url}/die/{kind}")
    assert out.returncode == 18, out.stderr  # CURLE_PARTIAL_FILE


def test_backend_dying_mid_chunked_body_never_sends_the_last_chunk(proxy) -> None:
    reply = exchange(proxy.port, b"GET /die/chunked HTTP/1.1\r\n" + H + b"\r\n")
    assert reply.closed
    assert reply.raw.startswith(b"HTTP/1.1 200")
    assert not reply.raw.endswith(b"0\r\n\r\n")
    assert reply.responses() == []


@pytest.mark.parametrize("framing", [b"Content-Length: 100000\r\n\r\n" + b"a" * 5000,
                                     b"Transfer-Encoding: chunked\r\n\r\n1388\r\n"
                                     + b"a" * 5000 + b"\r\n"])
def test_client_abort_mid_upload_never_completes_the_backend_request(proxy, backends,
                                                                     framing) -> None:
    target = f"/echo/abort/{uuid.uuid4().hex}"
    main = backends["main"]
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.sendall(f"POST {target} HTTP/1.1\r\n".encode() + H + framing)
        assert wait_until(lambda: any(target.encode() in bytes(c.raw) for c in main.conns))
    conn = next(c for c in main.conns if target.encode() in bytes(c.raw))
    assert wait_until(lambda: conn.closed), "the upstream connection stayed open"
    assert conn.incomplete
    assert not [r for r in main.requests if r.target == target.encode()]


# -- video hash affinity ----------------------------------------------------------------------


async def test_every_segment_of_a_video_reaches_one_backend(proxy) -> None:
    placement: dict[str, set[str]] = {}
    async with aiohttp.ClientSession() as s:
        for v in range(24):
            for seg in range(4):
                async with s.get(f"{proxy.url}/v/video{v}/{seg}.ts") as r:
                    assert r.status == 200
                    doc = await r.json()
                    assert doc["target"] == f"/v/video{v}/{seg}.ts"
                    placement.setdefault(f"video{v}", set()).add(doc["backend"])
    assert all(len(b) == 1 for b in placement.values()), placement
    used = {next(iter(b)) for b in placement.values()}
    assert used == set(VIDEO_BACKENDS), "24 videos should spread over all 3 backends"


def test_affinity_is_stable_across_connections_and_clients(proxy) -> None:
    first = echo(proxy, target=b"/v/stable/1.ts")["backend"]
    for seg in range(2, 6):
        assert echo(proxy, target=b"/v/stable/%d.ts" % seg)["backend"] == first
    out = curl(f"{proxy.url}/v/stable/99.ts")
    assert json.loads(out.stdout)["backend"] == first


def test_slow_backend_is_waited_for(proxy) -> None:
    start = time.monotonic()
    doc = echo(proxy, target=b"/slow/0.5")
    assert doc["target"] == "/slow/0.5" and time.monotonic() - start >= 0.5




def test_half_closed_client_still_gets_its_response(proxy) -> None:
    # RFC 9112 §9.6: a client may half-close after its request; the response still comes.
    reply = exchange(proxy.port, b"GET /echo/half HTTP/1.1\r\n" + H + b"\r\n", shut=True)
    assert json.loads(reply.first.body)["target"] == "/echo/half"
    assert reply.closed


# -- unusual but valid backend responses ----------------------------------------------------


def raw_then_next(proxy: LbproxyProcess, name: str, method: bytes = b"GET", minor: bytes = b"1"
                  ) -> tuple[bytes, Response | None, Response | None]:
    """GET /raw/NAME then a pipelined /echo/next: (raw reply, first, next response)."""
    reply = exchange(proxy.port, method + b" /raw/" + name.encode() + b" HTTP/1." + minor
                     + b"\r\n" + H + b"\r\nGET /echo/next HTTP/1.1\r\n" + H
                     + b"Connection: close\r\n\r\n")
    first, rest = parse_response(reply.raw, bodiless=method == b"HEAD")
    nxt, _ = parse_response(rest)
    return reply.raw, first, nxt


def test_103_early_hints_is_forwarded_to_http11_clients(proxy) -> None:
    # RFC 9110 §15.2: a proxy MUST forward 1xx responses it did not itself ask for.
    out = curl("-v", f"{proxy.url}/raw/early-hints")
    assert out.returncode == 0 and out.stdout == b"hints", out.stderr
    assert b"< HTTP/1.1 103" in out.stderr and b"rel=preload" in out.stderr, out.stderr
    raw, first, nxt = raw_then_next(proxy, "early-hints")
    assert raw.startswith(b"HTTP/1.1 103 ")
    assert first is not None and first.status == 103 and first.header(b"link")
    assert nxt is not None and nxt.status == 200 and nxt.body == b"hints"


def test_1xx_is_never_sent_to_an_http10_client(proxy) -> None:
    # RFC 9110 §15.2: a server MUST NOT send a 1xx response to an HTTP/1.0 client.
    reply = exchange(proxy.port, b"GET /raw/early-hints HTTP/1.0\r\n" + H + b"\r\n")
    assert reply.first.status == 200 and reply.first.body == b"hints"
    assert b" 103 " not in reply.raw


def test_close_delimited_response_is_rechunked_for_http11(proxy) -> None:
    _raw, first, nxt = raw_then_next(proxy, "close-delimited")
    assert first is not None and first.status == 200 and first.body == b"d" * 3000
    assert first.header(b"transfer-encoding") == b"chunked"  # RFC 9112 §6.3 item 8
    # The client connection outlives the backend's close: the next request is served.
    assert nxt is not None and json.loads(nxt.body)["target"] == "/echo/next"


def test_http10_backend_response_is_relayed(proxy) -> None:
    _raw, first, _ = raw_then_next(proxy, "http10-close")
    assert first is not None and first.status == 200 and first.body == b"ten"


def test_response_trailers_end_the_body_cleanly(proxy) -> None:
    _raw, first, nxt = raw_then_next(proxy, "trailers")
    assert first is not None and first.body == b"hello"
    assert nxt is not None and json.loads(nxt.body)["target"] == "/echo/next"


@pytest.mark.parametrize("name", ["extra-bytes", "two-responses"])
def test_bytes_after_a_complete_response_answer_nothing(proxy, backends, name) -> None:
    # A backend sending more than the response it declared is desynchronised. One request
    # gets one response: the excess (even a well-formed second response) is never
    # relayed, or a pipelining client would take it as the answer to its next request;
    # the upstream connection is not reused, and the client's next request is served.
    reply = exchange(proxy.port, b"GET /raw/" + name.encode() + b" HTTP/1.1\r\n" + H
                     + b"\r\nGET /echo/after-" + name.encode() + b" HTTP/1.1\r\n" + H
                     + b"Connection: close\r\n\r\n")
    assert b"SMUGGLED" not in reply.raw and b"x-smuggled" not in reply.raw.lower()
    first, nxt = reply.responses()
    assert first.body == b"hello"
    assert json.loads(nxt.body)["target"] == f"/echo/after-{name}"
    reqs = backends["main"].requests
    raw_conn = next(r.conn for r in reversed(reqs) if r.target == f"/raw/{name}".encode())
    assert reqs[-1].conn != raw_conn


def test_head_response_with_chunked_framing_has_no_body(proxy) -> None:
    _raw, first, nxt = raw_then_next(proxy, "head-chunked", method=b"HEAD")
    assert first is not None and first.status == 200
    assert nxt is not None and json.loads(nxt.body)["target"] == "/echo/next"


def test_304_keeps_its_content_length_and_sends_no_body(proxy) -> None:
    _raw, first, nxt = raw_then_next(proxy, "304-with-length")
    assert first is not None and first.status == 304
    assert first.header(b"content-length") == b"1234"  # RFC 9110 §8.6
    assert nxt is not None and json.loads(nxt.body)["target"] == "/echo/next"


def test_oversized_response_head_is_502(proxy) -> None:
    reply = exchange(proxy.port, b"GET /raw/huge-header HTTP/1.1\r\n" + H + b"\r\n")
    resp = reply.first
    assert resp.status == 502 and resp.header(b"x-lbproxy-error")
    assert reply.closed


# -- faults and load ------------------------------------------------------------------------


def test_backend_answering_before_the_upload_ends_reaches_the_client(proxy) -> None:
    # The backend refuses (403, Connection: close) without reading a 3 MB body. The
    # client must get that response, not a reset caused by its own unread upload.
    pieces = [b"POST /early HTTP/1.1\r\n" + H + b"Content-Length: 3000000\r\n\r\n"]
    pieces += [b"x" * 300_000] * 10
    reply = exchange(proxy.port, pieces, pause=0.05)
    assert reply.first.status == 403 and reply.first.body == b"no thanks", reply.raw
    assert reply.closed
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        conn.request("POST", "/early", body=b"y" * 3_000_000)
        resp = conn.getresponse()
        assert resp.status == 403 and resp.read() == b"no thanks"
    finally:
        conn.close()


def test_pooled_connection_closed_by_the_backend_is_not_a_failure(proxy) -> None:
    # Backends close idle keep-alive connections on their own clock (RFC 9112 §9.3.1);
    # the next request, idempotent or not, must not see that as a 502.
    for method, body in ((b"GET", b""), (b"POST", b"hi"), (b"GET", b"")):
        reply = exchange(proxy.port, method + b" /ka-close HTTP/1.1\r\n" + H
                         + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                         + body)
        assert reply.first.status == 200, reply.raw
        time.sleep(0.2)


async def test_many_concurrent_aiohttp_requests_all_succeed(proxy) -> None:
    async def one(session: aiohttp.ClientSession, i: int) -> str:
        async with session.get(f"{proxy.url}/echo/c/{i}") as r:
            assert r.status == 200
            return (await r.json())["target"]

    connector = aiohttp.TCPConnector(limit=50)
    async with aiohttp.ClientSession(connector=connector) as s:
        targets = await asyncio.wait_for(
            asyncio.gather(*(one(s, i) for i in range(300))), 30)
    assert targets == [f"/echo/c/{i}" for i in range(300)]


def test_set_cookie_fields_stay_separate(proxy) -> None:
    # RFC 9110 §5.3: Set-Cookie cannot be combined into one field line.
    _raw, first, _ = raw_then_next(proxy, "set-cookies")
    assert first is not None
    assert [v for n, v in first.headers if n.lower() == b"set-cookie"] == [b"a=1; Path=/",
                                                                            b"b=2, c"]


def test_obs_text_in_a_response_value_is_relayed_unchanged(proxy) -> None:
    _raw, first, _ = raw_then_next(proxy, "obs-text")
    assert first is not None and first.header(b"x-latin") == b"caf\xe9"


def test_nul_in_a_response_header_is_502(proxy) -> None:
    reply = exchange(proxy.port, b"GET /raw/nul-in-header HTTP/1.1\r\n" + H + b"\r\n")
    assert reply.first.status == 502 and reply.first.header(b"x-lbproxy-error")
    assert b"a\x00b" not in reply.raw


def test_repeated_request_fields_are_forwarded_in_order(proxy) -> None:
    doc = echo(proxy, b"X-A: 1\r\nX-B: x\r\nX-A: 2\r\n")
    assert seen(doc, "x-a") == ["1", "2"]


def test_sixty_pipelined_requests_are_all_answered_in_order(proxy) -> None:
    reqs = b"".join(b"GET /echo/pp/%d HTTP/1.1\r\n" % i + H + b"\r\n" for i in range(60))
    reply = exchange(proxy.port, reqs + b"GET /echo/pp/end HTTP/1.1\r\n" + H
                     + b"Connection: close\r\n\r\n", wait=10)
    targets = [json.loads(r.body)["target"] for r in reply.responses()]
    assert targets == [f"/echo/pp/{i}" for i in range(60)] + ["/echo/pp/end"]


def test_a_large_header_within_the_limits_is_forwarded(proxy) -> None:
    doc = echo(proxy, b"X-Big: " + b"b" * 15000 + b"\r\n")
    assert seen(doc, "x-big") == ["b" * 15000]


def test_nothing_after_connection_close_is_processed(proxy, backends) -> None:
    # RFC 9112 §9.6: after a request with "close", no further request is processed.
    tag = uuid.uuid4().hex.encode()
    reply = exchange(proxy.port, b"GET /echo/closing HTTP/1.1\r\n" + H + b"Connection: close"
                     b"\r\n\r\nGET /echo/ignored-" + tag + b" HTTP/1.1\r\n" + H + b"\r\n")
    (only,) = reply.responses()
    assert json.loads(only.body)["target"] == "/echo/closing"
    assert b"close" in only.tokens(b"connection") and reply.closed
    time.sleep(0.1)
    assert not any(tag in bytes(c.raw) for c in backends["main"].conns)


def test_backend_connection_close_does_not_close_the_client(proxy) -> None:
    # Connection is hop-by-hop (RFC 9110 §7.6.1): the backend closing its connection
    # says nothing about the client's.
    _raw, first, nxt = raw_then_next(proxy, "conn-close")
    assert first is not None and first.body == b"ok"
    assert b"close" not in first.tokens(b"connection")
    assert nxt is not None and json.loads(nxt.body)["target"] == "/echo/next"


def test_response_via_is_appended(proxy) -> None:
    _raw, first, _ = raw_then_next(proxy, "via")
    assert first is not None and first.header(b"via") == b"1.1 origin-cache, 1.1 lbproxy"


@pytest.mark.parametrize("target", [b"/echo?", b"/echo/%2e%2e/x?a=%20&b", b"/echo/a;b,c@d:e",
                                    b"/echo/%00"])
def test_request_target_is_forwarded_byte_for_byte(proxy, target) -> None:
    assert echo(proxy, target=target)["target"] == target.decode()


def test_upstream_connections_are_reused_across_client_connections(proxy, backends) -> None:
    conns = {echo(proxy, target=b"/echo/across/%d" % i)["conn"] for i in range(4)}
    assert len(conns) == 1, "each client connection opened a new upstream connection"


async def test_aiohttp_expect_100_and_streamed_chunked_upload(proxy) -> None:
    body = pattern(2 << 20)

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 100_000):
            yield body[i : i + 100_000]

    async with aiohttp.ClientSession() as s:
        async with s.post(f"{proxy.url}/echo/a100", data=io.BytesIO(body),
                          expect100=True) as r:
            doc = await r.json()
            assert r.status == 200 and doc["body_len"] == len(body)
        async with s.put(f"{proxy.url}/echo/achunked", data=pieces()) as r:
            doc = await r.json()
    assert doc["chunked"] and doc["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_http_client_chunked_upload(proxy) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        conn.request("POST", "/echo/hc", body=iter([b"abc", b"", b"defg"]),
                     encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
        resp = conn.getresponse()
        doc = json.loads(resp.read())
    finally:
        conn.close()
    assert doc["chunked"] and doc["body_len"] == 7
    assert doc["body_sha256"] == hashlib.sha256(b"abcdefg").hexdigest()


def test_pipelined_upload_behind_a_slow_response_is_held_then_forwarded(proxy) -> None:
    # The second request's 1 MiB body arrives while the first is still being answered:
    # the proxy holds a bounded amount, stops reading, and forwards it intact later.
    body = pattern(1 << 20)
    reply = exchange(proxy.port, b"GET /slow/0.5 HTTP/1.1\r\n" + H + b"\r\n"
                     + b"POST /echo/held HTTP/1.1\r\n" + H
                     + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body,
                     wait=10)
    first, second = reply.responses()
    assert json.loads(first.body)["target"] == "/slow/0.5"
    doc = json.loads(second.body)
    assert doc["target"] == "/echo/held" and doc["body_len"] == len(body)
    assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_several_x_forwarded_for_fields_become_one_list(proxy) -> None:
    doc = echo(proxy, b"X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-For: 198.51.100.2, "
               b"203.0.113.3\r\n")
    assert seen(doc, "x-forwarded-for") == ["192.0.2.1, 198.51.100.2, 203.0.113.3, 127.0.0.1"]


def test_upgrade_request_is_answered_as_plain_http_then_closed(proxy) -> None:
    # The proxy does not tunnel (no 101): the request goes on without Upgrade, and since
    # the client may start speaking the new protocol, nothing after it is parsed.
    reply = exchange(proxy.port, b"GET /echo/ws HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\n"
                     b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n"
                     b"\x81\x05hello")
    resp = reply.first
    assert resp.status == 200 and reply.closed
    doc = json.loads(resp.body)
    assert doc["target"] == "/echo/ws" and not seen(doc, "upgrade")
    assert len(reply.responses()) == 1


@pytest.mark.parametrize(("head", "cluster"), [
    (b"GET /r/x HTTP/1.1\r\nHost: special.test\r\n", "videos"),
    (b"GET /r/x HTTP/1.1\r\nHost: SPECIAL.test:8080\r\n", "videos"),  # RFC 9110 §4.2.3
    (b"GET http://special.test/r/x HTTP/1.1\r\nHost: other.test\r\n", "videos"),
    (b"PUT /r/x HTTP/1.1\r\n" + H + b"Content-Length: 0\r\n", "videos"),
    (b"GET /r/x HTTP/1.1\r\n" + H + b"X-Tenant: blue\r\n", "videos"),
    (b"GET /r/x HTTP/1.1\r\n" + H + b"X-Tenant: red\r\n", "main"),
    (b"GET /r/x HTTP/1.1\r\n" + H, "main"),
])
def test_routes_match_on_host_method_and_headers_first_match_wins(proxy, head, cluster) -> None:
    reply = exchange(proxy.port, head + b"Connection: close\r\n\r\n")
    backend = json.loads(reply.first.body)["backend"]
    assert (backend in VIDEO_BACKENDS) == (cluster == "videos"), backend


@pytest.mark.parametrize(("prefix", "header"), [
    (b"/q/seg?video=", None), (b"/h/seg", b"X-Video: "), (b"/c/seg", b"Cookie: a=1; vid=")])
def test_hash_on_query_header_and_cookie_keeps_a_video_on_one_backend(proxy, prefix,
                                                                      header) -> None:
    placement: dict[int, set[str]] = {}
    for video in range(12):
        for seg in range(3):
            value = b"vid%d" % video
            target = prefix + value + b"&s=%d" % seg if header is None else prefix + b"/%d" % seg
            extra = b"" if header is None else header + value + b"\r\n"
            doc = echo(proxy, extra, target=target)
            placement.setdefault(video, set()).add(doc["backend"])
    assert all(len(b) == 1 for b in placement.values()), placement
    assert len({next(iter(b)) for b in placement.values()}) >= 2, "12 keys on one backend"
