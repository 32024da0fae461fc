"""Black-box conformance: every documented error status, from a real `lbproxy run`.

Each case sends raw bytes and asserts the exact status, the X-Lbproxy-Error code, a short
plain-text body, Connection: close with the connection really closed, and what reached
the backend (nothing, for anything rejected while reading the request). The request
cases follow HAProxy's reg-tests/http-messages and the RFC 9112 smuggling suites
(http-garden, smuggler): an intermediary that guesses at ambiguous framing is exploitable.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from support.backends import Backends, refused_address
from support.configs import config_doc
from support.subproc import LbproxyProcess, curl, lbproxy_running
from support.waiting import wait_until
from support.wire import Reply, Response, exchange, parse_response

pytestmark = pytest.mark.timeout(60)

H = b"Host: example.test\r\n"
BODY_LIMIT = 1000
MAIN_PREFIXES = ["/echo", "/never", "/reset", "/close", "/bad", "/slow", "/bytes"]


@pytest.fixture(scope="module")
def backends() -> Iterator[Backends]:
    b = Backends(["main"])
    yield b
    b.close()


@pytest.fixture(scope="module")
def proxy(backends: Backends, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[LbproxyProcess]:
    routes: list[dict[str, object]] = [
        {"path_prefix": "/limited", "cluster": "main", "max_body_bytes": BODY_LIMIT},
        {"path_prefix": "/dead", "cluster": "dead"},
    ]
    routes += [{"path_prefix": p, "cluster": "main"} for p in MAIN_PREFIXES]
    # This module makes its one backend fail on purpose, many times and in any order;
    # passive ejection would turn later answers into 503s.
    no_ejection = {"enabled": False}
    with refused_address() as dead:
        doc = config_doc(
            {name: {"policy": "round_robin", "backends": [address],
                    "outlier_detection": no_ejection}
             for name, address in (("main", backends["main"].address), ("dead", dead))},
            routes,
            timeouts={"request_headers": 1.0, "client_body_idle": 1.0, "connect": 1.0,
                      "upstream_headers": 1.0, "upstream_idle": 3.0},
            limits={"max_request_line": 4096, "max_header_bytes": 16384, "max_headers": 50},
        )
        with lbproxy_running(doc, tmp_path_factory.mktemp("errors") / "lbproxy.toml") as run:
            yield run


def assert_proxy_error(reply: Reply, status: int, code: str | None = None) -> Response:
    """The documented shape of a proxy-made error: exact status, X-Lbproxy-Error, a short
    plain-text body naming the reason, Connection: close, and the connection closed."""
    resps = reply.responses()
    assert len(resps) == 1, f"want exactly one response, got {reply.raw!r}"
    resp = resps[0]
    assert resp.status == status, reply.raw
    err = resp.header(b"x-lbproxy-error")
    assert err and re.fullmatch(rb"[a-z0-9_]+", err), reply.raw
    if code is not None:
        assert err == code.encode(), reply.raw
    assert (resp.header(b"content-type") or b"").startswith(b"text/plain"), reply.raw
    assert 0 < len(resp.body) <= 200 and resp.body.strip().isascii(), reply.raw
    assert b"close" in resp.tokens(b"connection"), reply.raw
    assert reply.closed, "the proxy kept the connection open after a closing error"
    return resp


def settled_bytes(backends: Backends) -> int:
    """Backend byte count once it stops moving (earlier tests' stragglers have landed)."""
    last = -1
    for _ in range(50):
        now = backends.total_bytes()
        if now == last:
            return now
        last = now
        time.sleep(0.02)
    return last


def rejected(proxy: LbproxyProcess, backends: Backends, data: bytes | list[bytes], status: int,
             code: str | None = None, **kw: Any) -> None:
    """`data` gets the proxy's own `status` error and not one byte reaches the backend."""
    before = settled_bytes(backends)
    reply = exchange(proxy.port, data, **kw)
    assert_proxy_error(reply, status, code)
    time.sleep(0.05)
    assert backends.total_bytes() == before, "bytes of a rejected request reached the backend"


def req(head: bytes, body: bytes = b"") -> bytes:
    """A request line plus `head` (header lines) and `body`."""
    return b"POST /echo HTTP/1.1\r\n" + head + b"\r\n" + body


# RFC 9112 §6.3 item 3, §6.1, §5, §3; RFC 9110 §5.5, §7.2: each one is malformed.
BAD_400 = {
    "cl-and-te": req(H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                     b"0\r\n\r\n"),
    "te-and-cl": req(H + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n"),
    "two-content-lengths-differ": req(H + b"Content-Length: 5\r\nContent-Length: 6\r\n",
                                      b"hello!"),
    "two-content-lengths-same": req(H + b"Content-Length: 5\r\nContent-Length: 5\r\n",
                                    b"hello"),
    "content-length-list": req(H + b"Content-Length: 5, 5\r\n", b"hello"),
    "content-length-plus": req(H + b"Content-Length: +5\r\n", b"hello"),
    "content-length-minus": req(H + b"Content-Length: -5\r\n", b"hello"),
    "content-length-hex": req(H + b"Content-Length: 0x5\r\n", b"hello"),
    "content-length-inner-space": req(H + b"Content-Length: 1 0\r\n", b"helloworld"),
    "content-length-empty": req(H + b"Content-Length: \r\n"),
    "content-length-overflow": req(H + b"Content-Length: 99999999999999999999999\r\n", b"x"),
    "te-chunked-identity": req(H + b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"),
    "te-chunked-chunked": req(H + b"Transfer-Encoding: chunked, chunked\r\n", b"0\r\n\r\n"),
    "te-two-headers": req(H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                          b"0\r\n\r\n"),
    "te-chunked-then-gzip": req(H + b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"),
    "te-in-http10": b"POST /echo HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
    "te-vertical-tab": req(H + b"Transfer-Encoding:\x0bchunked\r\n", b"0\r\n\r\n"),
    "obs-fold": req(H + b"X-A: one\r\n two\r\n"),
    "obs-fold-te": req(H + b"Transfer-Encoding: identity\r\n chunked\r\n", b"0\r\n\r\n"),
    "space-before-colon": req(H + b"Content-Length : 0\r\n"),
    "tab-before-colon": req(H + b"X-A\t: 1\r\n"),
    "name-with-slash": req(H + b"X/A: 1\r\n"),
    "name-with-space": req(H + b"X A: 1\r\n"),
    "empty-name": req(H + b": 1\r\n"),
    "name-non-ascii": req(H + b"X-\xc3\xa9: 1\r\n"),
    "header-without-colon": req(H + b"NoColonHere\r\n"),
    "bare-cr-in-value": req(H + b"X-A: a\rb\r\n"),
    "nul-in-value": req(H + b"X-A: a\x00b\r\n"),
    "del-in-name": req(H + b"X-\x7fA: 1\r\n"),
    "leading-whitespace-first-header": b"GET /echo HTTP/1.1\r\n X-A: 1\r\n" + H + b"\r\n",
    "chunk-size-not-hex": req(H + b"Transfer-Encoding: chunked\r\n", b"zz\r\nhi\r\n0\r\n\r\n"),
    "chunk-size-overflow": req(H + b"Transfer-Encoding: chunked\r\n",
                               b"10000000000000000\r\nhi\r\n0\r\n\r\n"),
    "chunk-size-negative": req(H + b"Transfer-Encoding: chunked\r\n", b"-2\r\nhi\r\n0\r\n\r\n"),
    "chunk-size-0x": req(H + b"Transfer-Encoding: chunked\r\n", b"0x2\r\nhi\r\n0\r\n\r\n"),
    "chunk-size-space": req(H + b"Transfer-Encoding: chunked\r\n",
                            b"2 2\r\nhi\r\n0\r\n\r\n"),
    "chunk-ext-bad-char": req(H + b"Transfer-Encoding: chunked\r\n",
                              b"2;a\x00b\r\nhi\r\n0\r\n\r\n"),
    "chunk-data-no-crlf": req(H + b"Transfer-Encoding: chunked\r\n", b"2\r\nhiXX0\r\n\r\n"),
    "chunk-data-too-long": req(H + b"Transfer-Encoding: chunked\r\n", b"2\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-bare-lf": req(H + b"Transfer-Encoding: chunked\r\n", b"2\nhi\r\n0\r\n\r\n"),
    "no-host-http11": b"GET /echo HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET /echo HTTP/1.1\r\n" + H + b"Host: other.test\r\n\r\n",
    "host-with-space": b"GET /echo HTTP/1.1\r\nHost: a b\r\n\r\n",
    "host-with-slash": b"GET /echo HTTP/1.1\r\nHost: a/b\r\n\r\n",
    "host-with-userinfo": b"GET /echo HTTP/1.1\r\nHost: u@a\r\n\r\n",
    "host-port-not-digits": b"GET /echo HTTP/1.1\r\nHost: example.test:8x\r\n\r\n",
    "host-two-colons": b"GET /echo HTTP/1.1\r\nHost: a:1:2\r\n\r\n",
    "host-unclosed-ipv6": b"GET /echo HTTP/1.1\r\nHost: [::1\r\n\r\n",
    "host-empty-brackets": b"GET /echo HTTP/1.1\r\nHost: []:80\r\n\r\n",
    "absolute-form-bad-port": b"GET http://example.test:8x/echo HTTP/1.1\r\n" + H + b"\r\n",
    "target-no-slash": b"GET echo HTTP/1.1\r\n" + H + b"\r\n",
    "target-fragment": b"GET /echo#frag HTTP/1.1\r\n" + H + b"\r\n",
    "target-space": b"GET /ec ho HTTP/1.1\r\n" + H + b"\r\n",
    "target-empty": b"GET  HTTP/1.1\r\n" + H + b"\r\n",
    "target-asterisk-get": b"GET * HTTP/1.1\r\n" + H + b"\r\n",
    "target-ctl": b"GET /echo\x01 HTTP/1.1\r\n" + H + b"\r\n",
    "absolute-form-userinfo": b"GET http://u@example.test/echo HTTP/1.1\r\n" + H + b"\r\n",
    "absolute-form-no-host": b"GET http:///echo HTTP/1.1\r\n" + H + b"\r\n",
    "version-garbage": b"GET /echo HTTX/1.1\r\n" + H + b"\r\n",
    "version-lowercase": b"GET /echo http/1.1\r\n" + H + b"\r\n",
    "version-no-minor": b"GET /echo HTTP/1\r\n" + H + b"\r\n",
    "method-lowercase": b"get /echo HTTP/1.1\r\n" + H + b"\r\n",
    "method-non-token": b"GE(T /echo HTTP/1.1\r\n" + H + b"\r\n",
    "request-line-bare-cr": b"GET /echo HTTP/1.1\r" + H + b"\r\n",
    "upgrade-with-body": req(H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
                             b"Content-Length: 5\r\n", b"hello"),
}


@pytest.mark.parametrize("name", sorted(BAD_400))
def test_malformed_request_is_400_and_nothing_forwarded(proxy, backends, name) -> None:
    rejected(proxy, backends, BAD_400[name], 400)


# RFC 9110 §15.6.6 allows 505 for a version the server will not speak; the documented
# status for a malformed request is 400; both close and forward nothing.
@pytest.mark.parametrize(
    "line", [b"GET /echo HTTP/1.2", b"GET /echo HTTP/2.0", b"GET /echo HTTP/3.0",
             b"GET /echo HTTP/0.9", b"GET /echo\r\n"])
def test_unsupported_version_is_rejected_and_nothing_forwarded(proxy, backends, line) -> None:
    before = settled_bytes(backends)
    reply = exchange(proxy.port, line + b"\r\n" + H + b"\r\n")
    resp = reply.first
    assert resp.status in (400, 505)
    assert_proxy_error(reply, resp.status)
    time.sleep(0.05)
    assert backends.total_bytes() == before


def test_very_long_method_is_rejected(proxy, backends) -> None:
    method = b"A" * 5000
    before = settled_bytes(backends)
    reply = exchange(proxy.port, method + b" /echo HTTP/1.1\r\n" + H + b"\r\n")
    assert reply.first.status in (400, 414, 501)
    assert_proxy_error(reply, reply.first.status)
    assert backends.total_bytes() == before


def test_absolute_form_host_mismatch_uses_the_authority(proxy, backends) -> None:
    # RFC 9112 §3.2.2: a proxy receiving absolute-form ignores Host and uses the authority.
    reply = exchange(proxy.port, b"GET http://real.test/echo HTTP/1.1\r\nHost: fake.test\r\n"
                     b"Connection: close\r\n\r\n")
    assert reply.first.status == 200
    got = backends["main"].requests[-1]
    assert got.target == b"/echo"
    assert got.header(b"host") == b"real.test"


@pytest.mark.parametrize(
    "te", [b"gzip", b"gzip, chunked", b"deflate, chunked", b"identity", b"compress",
           b"xchunked", b'"chunked"'])
def test_unsupported_transfer_coding_is_501(proxy, backends, te) -> None:
    # RFC 9112 §6.1: a server that receives a transfer coding it does not understand
    # should respond 501; "identity" was removed from the registry (RFC 9112 §7).
    rejected(proxy, backends, req(H + b"Transfer-Encoding: " + te + b"\r\n", b"0\r\n\r\n"),
             501, "unsupported_transfer_coding")


def test_request_target_too_long_is_414(proxy, backends) -> None:
    rejected(proxy, backends, b"GET /echo/" + b"a" * 5000 + b" HTTP/1.1\r\n" + H + b"\r\n",
             414, "uri_too_long")


def test_request_target_too_long_without_line_end_is_414(proxy, backends) -> None:
    # The proxy must not buffer an endless request line waiting for its end.
    rejected(proxy, backends, b"GET /echo/" + b"a" * 20000, 414, "uri_too_long")


def test_too_many_headers_is_431(proxy, backends) -> None:
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(60))
    rejected(proxy, backends, b"GET /echo HTTP/1.1\r\n" + H + many + b"\r\n", 431,
             "headers_too_large")


def test_header_block_too_large_is_431(proxy, backends) -> None:
    big = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(20))
    rejected(proxy, backends, b"GET /echo HTTP/1.1\r\n" + H + big + b"\r\n", 431,
             "headers_too_large")


def test_one_endless_header_line_is_431(proxy, backends) -> None:
    rejected(proxy, backends, b"GET /echo HTTP/1.1\r\n" + H + b"X-A: " + b"v" * 40000, 431,
             "headers_too_large")


def test_content_length_over_route_limit_is_413_before_forwarding(proxy, backends) -> None:
    body = b"x" * (BODY_LIMIT + 1)
    rejected(proxy, backends, b"POST /limited HTTP/1.1\r\n" + H
             + b"Content-Length: %d\r\n\r\n" % len(body) + body, 413, "body_too_large")


def test_content_length_at_route_limit_is_forwarded(proxy, backends) -> None:
    body = b"x" * BODY_LIMIT
    reply = exchange(proxy.port, b"POST /limited HTTP/1.1\r\n" + H
                     + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    assert reply.first.status == 200
    assert backends["main"].requests[-1].body == body


def test_chunked_body_over_route_limit_is_413_before_the_excess_is_forwarded(
        proxy, backends) -> None:
    # "413, before a byte past the limit is forwarded": the head and up to BODY_LIMIT body
    # bytes may have gone upstream, but never byte BODY_LIMIT + 1 and never a whole request.
    main = backends["main"]
    before_conns = len(main.conns)
    before_reqs = len(main.requests)
    pieces = [b"POST /limited HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"]
    pieces += [b"190\r\n" + b"y" * 400 + b"\r\n"] * 2  # 800 bytes: under the limit
    pieces += [b"190\r\n" + b"z" * 400 + b"\r\n", b"0\r\n\r\n"]  # crosses it
    reply = exchange(proxy.port, pieces, pause=0.1)
    assert_proxy_error(reply, 413, "body_too_large")
    assert wait_until(lambda: all(c.closed for c in main.conns[before_conns:]))
    assert len(main.requests) == before_reqs, "a complete request reached the backend"
    for c in main.conns[before_conns:]:
        assert b"z" not in bytes(c.raw), "a byte past the limit reached the backend"
        assert bytes(c.raw).count(b"y") <= BODY_LIMIT


def test_slow_request_head_is_408(proxy, backends) -> None:
    # Slowloris: one header line at a time, never finishing the head (timeout 1 s).
    pieces = [b"GET /echo HTTP/1.1\r\n", H] + [b"X-Slow: 1\r\n"] * 8
    start = time.monotonic()
    rejected(proxy, backends, pieces, 408, "request_timeout", pause=0.3, wait=5,
             stop_when_answered=True)
    assert time.monotonic() - start < 4.5


def test_idle_request_body_is_408_and_the_upstream_exchange_never_completes(
        proxy, backends) -> None:
    main = backends["main"]
    before_reqs = len(main.requests)
    reply = exchange(proxy.port, b"POST /echo HTTP/1.1\r\n" + H
                     + b"Content-Length: 100\r\n\r\n" + b"a" * 10, wait=5)
    assert_proxy_error(reply, 408, "request_timeout")
    time.sleep(0.1)
    assert len(main.requests) == before_reqs


def test_no_route_is_404(proxy, backends) -> None:
    before = settled_bytes(backends)
    reply = exchange(proxy.port, b"GET /nothing-here HTTP/1.1\r\n" + H
                     + b"Connection: close\r\n\r\n")
    assert_proxy_error(reply, 404, "no_route")
    assert backends.total_bytes() == before


def test_no_route_keeps_a_keep_alive_connection_usable(proxy, backends) -> None:
    reply = exchange(proxy.port, b"GET /nothing-here HTTP/1.1\r\n" + H + b"\r\n"
                     b"GET /echo HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    first, second = reply.responses()
    assert first.status == 404 and first.header(b"x-lbproxy-error") == b"no_route"
    assert second.status == 200


def test_backend_refusing_connections_is_502(proxy) -> None:
    reply = exchange(proxy.port, b"GET /dead HTTP/1.1\r\n" + H + b"\r\n")
    assert_proxy_error(reply, 502)


@pytest.mark.parametrize("path", [b"/reset", b"/close"])
def test_backend_failing_before_a_response_is_502(proxy, backends, path) -> None:
    reply = exchange(proxy.port, b"GET " + path + b" HTTP/1.1\r\n" + H + b"\r\n")
    assert_proxy_error(reply, 502)


@pytest.mark.parametrize("name", ["garbage-status-line", "not-http",
                                  "cl-and-te", "two-content-lengths", "bad-chunk-size",
                                  "negative-content-length", "space-before-colon"])
def test_malformed_backend_response_is_502_and_the_connection_discarded(
        proxy, backends, name) -> None:
    main = backends["main"]
    reply = exchange(proxy.port, b"GET /bad/" + name.encode() + b" HTTP/1.1\r\n" + H + b"\r\n")
    if name == "bad-chunk-size" and reply.raw.startswith(b"HTTP/1.1 200"):
        # The head was valid and was relayed; then the body must be cut short, never ended.
        assert not reply.responses() and reply.closed, reply.raw
    else:
        assert_proxy_error(reply, 502)
    bad = [r for r in main.requests if r.target.startswith(b"/bad/")][-1]
    # The next request gets a fresh upstream connection, not the poisoned one.
    ok = exchange(proxy.port, b"GET /echo HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    assert ok.first.status == 200
    assert main.requests[-1].conn != bad.conn


def test_backend_never_answering_is_504(proxy) -> None:
    start = time.monotonic()
    reply = exchange(proxy.port, b"GET /never HTTP/1.1\r\n" + H + b"\r\n", wait=5)
    assert_proxy_error(reply, 504, "backend_timeout")
    assert time.monotonic() - start < 4


def test_unknown_expectation_is_417_and_nothing_forwarded(proxy, backends) -> None:
    rejected(proxy, backends, req(H + b"Expect: something-else\r\nContent-Length: 5\r\n",
                                  b"hello"), 417)


def admin_patch(proxy: LbproxyProcess, cluster: str, address: str, doc: dict[str, object]) -> int:
    """PATCH /clusters/{cluster}/backends/{address} on the admin API; the status."""
    url = f"{proxy.admin_url}/clusters/{cluster}/backends/{address}"
    request = urllib.request.Request(url, data=json.dumps(doc).encode(), method="PATCH",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return resp.status


def test_503_with_retry_after_when_no_backend_is_acceptable(proxy, backends) -> None:
    # The only backend drained through the admin API: the cluster gate refuses.
    address = backends["main"].address
    assert admin_patch(proxy, "main", address, {"state": "drain"}) == 200
    try:
        before = settled_bytes(backends)
        reply = exchange(proxy.port, b"GET /echo HTTP/1.1\r\n" + H + b"\r\n")
        resp = assert_proxy_error(reply, 503)
        assert (resp.header(b"retry-after") or b"").isdigit()
        assert int(resp.header(b"retry-after") or 0) >= 1
        assert backends.total_bytes() == before
    finally:
        assert admin_patch(proxy, "main", address, {"state": "active"}) == 200
    ok = exchange(proxy.port, b"GET /echo HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    assert ok.first.status == 200


@pytest.mark.parametrize("expect", ["", "100-continue"])
def test_oversized_upload_from_curl_gets_the_413_not_a_reset(proxy, backends, expect) -> None:
    # Without Expect, curl is still sending when the 413 comes: the proxy must half-close
    # and drain rather than reset (RFC 9112 §9.6), or curl never sees the status.
    before = settled_bytes(backends)
    out = curl("-o", "/dev/null", "-w", "%{http_code}", "-H", f"Expect: {expect}",
               "--data-binary", "@-", f"{proxy.url}/limited", data=b"u" * (4 << 20))
    assert out.stdout == b"413", out.stderr
    assert backends.total_bytes() == before


def test_oversized_body_sent_in_full_still_gets_the_413(proxy, backends) -> None:
    body = b"w" * (4 << 20)
    head = b"POST /limited HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % len(body)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            s.sendall(head + body)
        got = s.recv(65536)
    assert got.startswith(b"HTTP/1.1 413 "), got


def test_oversized_upload_from_http_client_gets_the_413(proxy, backends) -> None:
    # http.client sends the whole body before reading: a proxy that closes with unread
    # input resets the connection and the client sees an exception, not the 413.
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        conn.request("POST", "/limited", body=b"h" * (8 << 20))
        resp = conn.getresponse()
        assert resp.status == 413
        assert resp.getheader("X-Lbproxy-Error") == "body_too_large"
        resp.read()
    finally:
        conn.close()


def request_line(total: int) -> bytes:
    """A GET request line (without CRLF) exactly `total` bytes long."""
    return b"GET /echo/" + b"a" * (total - len(b"GET /echo/ HTTP/1.1")) + b" HTTP/1.1"


@pytest.mark.parametrize(("total", "status"), [(4096, 200), (4097, 414)])
def test_request_line_limit_is_exact(proxy, total, status) -> None:
    line = request_line(total)
    assert len(line) == total
    reply = exchange(proxy.port, line + b"\r\n" + H + b"Connection: close\r\n\r\n")
    assert reply.first.status == status


@pytest.mark.parametrize(("fields", "status"), [(50, 200), (51, 431)])
def test_header_count_limit_is_exact(proxy, fields, status) -> None:
    # max_headers = 50 counts every field line, Host and Connection included.
    extra = b"".join(b"X-%d: v\r\n" % i for i in range(fields - 2))
    reply = exchange(proxy.port, b"GET /echo HTTP/1.1\r\n" + H + extra
                     + b"Connection: close\r\n\r\n")
    assert reply.first.status == status


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_request_hidden_in_a_body_stays_body(proxy, backends, framing) -> None:
    # Smuggling-shaped payloads are opaque bytes: the backend sees one request.
    inner = b"GET /smuggled HTTP/1.1\r\nHost: example.test\r\n\r\n"
    if framing == "chunked":
        head = b"Transfer-Encoding: chunked\r\n"
        body = b"0\r\n\r\n" + inner
        wire = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    else:
        head, body = b"Content-Length: %d\r\n" % len(inner), inner
        wire = inner
    reply = exchange(proxy.port, b"POST /echo/outer HTTP/1.1\r\n" + H + head
                     + b"Connection: close\r\n\r\n" + wire)
    assert len(reply.responses()) == 1 and reply.first.status == 200
    got = [r for r in backends["main"].requests if r.target in (b"/echo/outer", b"/smuggled")]
    assert got[-1].target == b"/echo/outer" and got[-1].body == body
    assert not [r for r in got if r.target == b"/smuggled"]


def test_expect_100_continue_to_a_dead_backend_gets_502_and_no_100(proxy) -> None:
    out = curl("-v", "-H", "Expect: 100-continue", "--data-binary", "@-",
               f"{proxy.url}/dead", data=b"e" * 5000)
    assert b"< HTTP/1.1 502" in out.stderr, out.stderr
    assert b"< HTTP/1.1 100" not in out.stderr


def test_a_slow_but_steady_body_is_not_timed_out(proxy, backends) -> None:
    # client_body_idle (1 s) bounds the gap between body bytes, not the whole upload.
    pieces = [b"POST /echo/steady HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
              b"Connection: close\r\n\r\n"]
    pieces += [b"4\r\nslow\r\n"] * 5 + [b"0\r\n\r\n"]
    reply = exchange(proxy.port, pieces, pause=0.4, wait=5)
    assert reply.first.status == 200
    assert backends["main"].requests[-1].body == b"slow" * 5


def test_keep_alive_idle_longer_than_the_head_timeout_is_not_a_408(proxy) -> None:
    # The request_headers clock (1 s) starts with a request's first byte, not when the
    # previous response ended (client_idle governs the wait between requests).
    first = b"GET /echo/1 HTTP/1.1\r\n" + H + b"\r\n"
    second = b"GET /echo/2 HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
    reply = exchange(proxy.port, [first, second], pause=1.6, wait=5)
    statuses = [r.status for r in reply.responses()]
    assert statuses == [200, 200], reply.raw


@pytest.mark.parametrize("raw", [b"GET /echo\r\n", b"GET /echo\n", b"\r\nGET /echo\r\n",
                                 b"GET /echo\r\nHost: example.test\r\n"])
def test_http09_request_is_rejected_at_once(proxy, backends, raw) -> None:
    # An HTTP/0.9 client sends one line and waits: it must get an answer and a close now,
    # not after the request_headers timeout (1 s here).
    before = settled_bytes(backends)
    start = time.monotonic()
    reply = exchange(proxy.port, raw, wait=3)
    assert time.monotonic() - start < 0.8, "the 0.9 request waited for the head timeout"
    assert reply.first.status in (400, 505)
    assert_proxy_error(reply, reply.first.status)
    assert backends.total_bytes() == before


@pytest.mark.parametrize("framing", [b"Content-Length: 5\r\n\r\nq404q",
                                     b"Transfer-Encoding: chunked\r\n\r\n5\r\nq404q\r\n0\r\n\r\n"])
def test_no_route_with_a_body_then_a_pipelined_request(proxy, backends, framing) -> None:
    # The 404's body is read and dropped, never parsed as a request nor forwarded.
    reply = exchange(proxy.port, b"POST /nothing-here HTTP/1.1\r\n" + H + framing
                     + b"GET /echo/after-404 HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    statuses = [r.status for r in reply.responses()]
    assert statuses[0] == 404
    if len(statuses) == 2:
        assert statuses[1] == 200
        assert backends["main"].requests[-1].target == b"/echo/after-404"
    else:
        assert statuses == [404] and reply.closed
    assert not any(b"q404q" in bytes(c.raw) for c in backends["main"].conns)


@pytest.mark.parametrize("host", [b"example.test", b"example.test:8080", b"[::1]:8080",
                                  b"192.0.2.1", b"xn--bcher-kva.example", b""])
def test_valid_host_values_are_forwarded(proxy, backends, host) -> None:
    reply = exchange(proxy.port, b"GET /echo/host HTTP/1.1\r\nHost: " + host
                     + b"\r\nConnection: close\r\n\r\n")
    assert reply.first.status == 200
    assert backends["main"].requests[-1].header(b"host") == host


def test_whitespace_around_field_values_is_not_part_of_them(proxy, backends) -> None:
    # RFC 9110 §5.5: OWS around a field value is excluded from it. "Content-Length: 5 "
    # is a valid length of 5, and no value is forwarded with its trailing whitespace.
    tag = uuid.uuid4().hex
    reply = exchange(proxy.port, b"POST /echo/ows-" + tag.encode() + b" HTTP/1.1\r\n" + H
                     + b"Content-Length:  5 \t\r\nX-Padded: \t padded value  \t\r\n"
                     b"Connection: close\r\n\r\nhello")
    assert reply.first.status == 200, reply.raw
    conn = next(c for c in backends["main"].conns if tag.encode() in bytes(c.raw))
    raw = bytes(conn.raw).lower()
    assert b"\r\nx-padded: padded value\r\n" in raw, raw
    assert b"\r\ncontent-length: 5\r\n" in raw
    assert conn.requests[-1].body == b"hello"


def test_oversized_chunked_upload_from_curl_gets_the_413(proxy, backends) -> None:
    main = backends["main"]
    before = len(main.requests)
    out = curl("-o", "/dev/null", "-w", "%{http_code}", "-H", "Expect:", "-H",
               "Transfer-Encoding: chunked", "--data-binary", "@-", f"{proxy.url}/limited",
               data=b"c" * (4 << 20))
    assert out.stdout == b"413", out.stderr
    assert len(main.requests) == before, "a complete request reached the backend"


def test_head_to_no_route_gets_a_bodiless_404_and_the_connection_stays_usable(proxy) -> None:
    # RFC 9110 §9.3.2: a response to HEAD has no content. The 404 keeps the connection,
    # so a body here would be read as the start of the next response.
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        conn.request("HEAD", "/nothing-here")
        resp = conn.getresponse()
        assert resp.status == 404 and resp.getheader("X-Lbproxy-Error") == "no_route"
        assert resp.read() == b""
        conn.request("GET", "/echo/after-head")
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read())["target"] == "/echo/after-head"
    finally:
        conn.close()


@pytest.mark.parametrize(("path", "status"), [(b"/dead", 502), (b"/never", 504),
                                              (b"/nothing-here", 404)])
def test_proxy_errors_to_head_have_no_body(proxy, path, status) -> None:
    reply = exchange(proxy.port, b"HEAD " + path + b" HTTP/1.1\r\n" + H
                     + b"Connection: close\r\n\r\n", wait=5)
    resp, rest = parse_response(reply.raw, bodiless=True)
    assert resp is not None and resp.status == status and resp.header(b"x-lbproxy-error")
    assert rest == b"" and reply.closed
