"""Malformed requests: exact status, X-Lbproxy-Error, Connection: close, nothing upstream.

Each case is raw bytes on a raw socket (HAProxy reg-tests style); the backend must not
even see a connection, because nothing is forwarded until the head is fully validated.
"""

from __future__ import annotations

import pytest
from support.backends import Backend
from support.inproc import on_uvloop, running
from support.wire import Client, exchange_async, parse_response

from lbproxy.proxy import errors

H = b"Host: a\r\n"
CASES: list[tuple[str, bytes, int, bytes]] = [
    # RFC 9112 §6.3: Content-Length with Transfer-Encoding
    ("cl_and_te", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, b"bad_request"),
    ("te_and_cl", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
     b"Content-Length: 5\r\n\r\n0\r\n\r\n", 400, b"bad_request"),
    ("duplicate_cl_same", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1\r\n"
     b"Content-Length: 1\r\n\r\nx", 400, b"bad_request"),
    ("duplicate_cl_differ", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1\r\n"
     b"Content-Length: 2\r\n\r\nxx", 400, b"bad_request"),
    ("cl_list", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1, 1\r\n\r\nx", 400, b"bad_request"),
    ("cl_sign", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +1\r\n\r\nx", 400, b"bad_request"),
    ("cl_hex", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x1\r\n\r\nx", 400, b"bad_request"),
    # RFC 9112 §6.1: only a single, final "chunked"
    ("te_gzip_chunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n"
     b"0\r\n\r\n", 501, b"unsupported_transfer_coding"),
    ("te_gzip", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n", 501,
     b"unsupported_transfer_coding"),
    ("te_chunked_not_final", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n"
     b"\r\n", 400, b"bad_request"),
    ("te_twice", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, b"bad_request"),
    ("te_chunked_chunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, chunked\r\n"
     b"\r\n0\r\n\r\n", 400, b"bad_request"),
    ("te_in_http10", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400,
     b"bad_request"),
    # RFC 9112 §5.1: no whitespace before the colon; tokens only in names
    ("space_before_colon", b"GET / HTTP/1.1\r\n" + H + b"X-Evil : 1\r\n\r\n", 400, b"bad_request"),
    ("tab_before_colon", b"GET / HTTP/1.1\r\n" + H + b"X-Evil\t: 1\r\n\r\n", 400, b"bad_request"),
    ("non_token_name", b"GET / HTTP/1.1\r\n" + H + b"X(Evil): 1\r\n\r\n", 400, b"bad_request"),
    ("empty_name", b"GET / HTTP/1.1\r\n" + H + b": 1\r\n\r\n", 400, b"bad_request"),
    ("te_space_name", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n"
     b"0\r\n\r\n", 400, b"bad_request"),
    # RFC 9112 §2.2: bare CR, NUL; §5.2: obs-fold
    ("bare_cr_value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rb\r\n\r\n", 400, b"bad_request"),
    ("bare_lf_line", b"GET / HTTP/1.1\n" + H + b"\r\n", 400, b"bad_request"),
    ("nul_value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400, b"bad_request"),
    ("obs_fold", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n", 400, b"bad_request"),
    # RFC 9112 §7.1: chunk sizes
    ("chunk_size_bad", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
     b"zz\r\nhello\r\n0\r\n\r\n", 400, b"bad_request"),
    ("chunk_size_negative", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
     b"-5\r\nhello\r\n0\r\n\r\n", 400, b"bad_request"),
    ("chunk_size_overflow", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
     b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n", 400, b"bad_request"),
    ("chunk_size_space", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
     b"5 \r\nhello\r\n0\r\n\r\n", 400, b"bad_request"),
    ("chunk_data_too_long", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
     b"2\r\nhello\r\n0\r\n\r\n", 400, b"bad_request"),
    # RFC 9112 §3.2: exactly one Host in HTTP/1.1
    ("missing_host", b"GET / HTTP/1.1\r\n\r\n", 400, b"bad_request"),
    ("duplicate_host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, b"bad_request"),
    ("bad_host_chars", b"GET / HTTP/1.1\r\nHost: a b/c\r\n\r\n", 400, b"bad_request"),
    # RFC 9112 §3.2: request-target forms
    ("target_no_slash", b"GET foo HTTP/1.1\r\n" + H + b"\r\n", 400, b"bad_request"),
    ("target_fragment", b"GET /a#frag HTTP/1.1\r\n" + H + b"\r\n", 400, b"bad_request"),
    ("asterisk_not_options", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400, b"bad_request"),
    ("authority_form_get", b"GET a.example:80 HTTP/1.1\r\n" + H + b"\r\n", 400, b"bad_request"),
    ("absolute_form_other_scheme", b"GET ftp://a/b HTTP/1.1\r\n" + H + b"\r\n", 400,
     b"bad_request"),
    ("absolute_form_userinfo", b"GET http://u@a/b HTTP/1.1\r\n" + H + b"\r\n", 400,
     b"bad_request"),
    ("control_in_target", b"GET /a\x01 HTTP/1.1\r\n" + H + b"\r\n", 400, b"bad_request"),
    ("space_in_target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400, b"bad_request"),
    ("unknown_method", b"FROB / HTTP/1.1\r\n" + H + b"\r\n", 400, b"bad_request"),
    ("lowercase_method", b"get / HTTP/1.1\r\n" + H + b"\r\n", 400, b"bad_request"),
    # CONNECT asks for a tunnel: not supported (501, documented in docs/dataplane.md)
    ("connect", b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", 501,
     b"unsupported_method"),
    # Versions: only HTTP/1.0 and 1.1; a well-formed other version is 505, garbage is 400
    ("http_2_0", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505, b"http_version_not_supported"),
    ("http_0_9", b"GET / HTTP/0.9\r\n" + H + b"\r\n", 505, b"http_version_not_supported"),
    ("http_1_2", b"GET / HTTP/1.2\r\n" + H + b"\r\n", 505, b"http_version_not_supported"),
    ("http_garbage", b"GET / HTTX/1.1\r\n" + H + b"\r\n", 400, b"bad_request"),
    # Upgrade with a body would smuggle the body past llhttp
    ("upgrade_with_body", b"POST / HTTP/1.1\r\n" + H + b"Connection: upgrade\r\n"
     b"Upgrade: websocket\r\nContent-Length: 5\r\n\r\nhello", 400, b"bad_request"),
    ("two_request_ids_are_fine_but_expect_bad", b"PUT / HTTP/1.1\r\n" + H +
     b"Expect: 100-continue, x\r\nContent-Length: 1\r\n\r\nx", 417, b"expectation_failed"),
]


@pytest.mark.parametrize(("raw", "status", "code"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
@on_uvloop
async def test_malformed_request_is_rejected_before_the_backend(
    raw: bytes, status: int, code: bytes
) -> None:
    backend = Backend()
    async with running(backend) as proxy:
        out = await exchange_async(proxy.port, raw)
    assert out.first.status == status, out
    assert out.first.header(b"x-lbproxy-error") == code
    assert out.first.header(b"connection") == b"close"
    body = out.raw.split(b"\r\n\r\n", 1)[1]
    assert out.first.header(b"content-length") == b"%d" % len(body)
    assert backend.connections == 0 and not backend.raw


@on_uvloop
async def test_request_line_too_long_is_414() -> None:
    backend = Backend()
    async with running(backend, limits={"max_request_line": 1024}) as proxy:
        out = await exchange_async(proxy.port,
                                   b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n" + H + b"\r\n")
        # the limit is enforced while the line is still arriving, too
        partial = await exchange_async(proxy.port, b"GET /" + b"a" * 5000)
    assert out.first.status == 414 and out.first.header(b"x-lbproxy-error") == b"uri_too_long"
    assert partial.first.status == 414
    assert backend.connections == 0


@pytest.mark.parametrize("case", ["bytes", "count", "one_huge_unfinished_line"])
@on_uvloop
async def test_headers_too_large_is_431(case: str) -> None:
    backend = Backend()
    limits = {"max_header_bytes": 4096, "max_headers": 20}
    if case == "bytes":
        raw = b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 500)
                                                  for i in range(10)) + b"\r\n"
    elif case == "count":
        raw = b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: v\r\n" % i for i in range(30)) + b"\r\n"
    else:
        raw = b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"v" * 200_000
    async with running(backend, limits=limits) as proxy:
        out = await exchange_async(proxy.port, raw)
    assert out.first.status == 431 and out.first.header(b"x-lbproxy-error") == b"headers_too_large"
    assert backend.connections == 0


@on_uvloop
async def test_content_length_over_route_limit_is_413_before_forwarding() -> None:
    backend = Backend()
    routes = [{"path_prefix": "/", "cluster": "c", "max_body_bytes": 100}]
    async with running(backend, routes=routes) as proxy:
        out = await exchange_async(proxy.port, b"POST / HTTP/1.1\r\n" + H +
                             b"Content-Length: 101\r\n\r\n" + b"x" * 101)
        ok = await exchange_async(proxy.port, b"POST / HTTP/1.1\r\n" + H +
                            b"Content-Length: 100\r\nConnection: close\r\n\r\n" + b"x" * 100)
    assert out.first.status == 413 and out.first.header(b"x-lbproxy-error") == b"body_too_large"
    assert ok.first.status == 200
    assert len(backend.requests) == 1 and backend.requests[0].body_len == 100


@on_uvloop
async def test_chunked_body_over_limit_is_413_and_excess_never_forwarded() -> None:
    backend = Backend()
    async with running(backend, limits={"max_body_bytes": 100}) as proxy:
        c = await Client.connect(proxy.port)
        await c.send(b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                     b"3c\r\n" + b"a" * 60 + b"\r\n")
        await c.send(b"3c\r\n" + b"b" * 60 + b"\r\n")  # running total 120 > 100
        out = await c.read_all()
        c.close()
    assert out.first.status == 413
    # whatever reached the backend is the first 60 bytes at most, never a byte of "b"
    assert b"b" * 10 not in bytes(backend.raw)
    assert not backend.requests  # the upstream request never completed


@on_uvloop
async def test_pipelined_bad_request_answered_after_the_good_one() -> None:
    backend = Backend()
    async with running(backend) as proxy:
        out = await exchange_async(proxy.port, b"GET /good HTTP/1.1\r\n" + H + b"\r\n"
                             b"GET /bad HTTP/1.1\r\n\r\n")
    first, rest = out.responses()
    assert first.status == 200 and rest.status == 400
    assert [r.target for r in backend.requests] == [b"/good"]


@pytest.mark.parametrize("err", [*errors.TABLE, errors.refusal("no_healthy_backend", 1),
                                 errors.NO_ROUTE_CLOSE], ids=lambda e: f"{e.status}-{e.code}")
def test_every_error_response_is_well_formed(err: errors.ProxyError) -> None:
    body = err.wire.partition(b"\r\n\r\n")[2]
    resp, _ = parse_response(err.wire)
    assert resp is not None
    assert resp.status == err.status
    assert resp.header(b"x-lbproxy-error") == err.code.encode()
    assert resp.header(b"content-length") == b"%d" % len(body)
    assert body == err.reason.encode() + b"\n"
    assert (resp.header(b"connection") == b"close") == err.close
    if err.status == 503:
        assert resp.header(b"retry-after") == b"1"
