"""The compiled head code (`lbproxy.proxy._http_c`) and its Python twin agree; it loaded."""

from __future__ import annotations

import importlib
import re
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbproxy import native
from lbproxy.proxy import _http_py, http

IMPLS = ["py", "native"]


def load(name: str) -> ModuleType:
    """The twin or the compiled module."""
    module = "lbproxy.proxy._http_py" if name == "py" else "lbproxy.proxy._http_c"
    return importlib.import_module(module)


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """Each implementation in turn (multidict-style fixture)."""
    return load(request.param)


def test_native_module_loaded() -> None:
    """Fails when the build did not produce lbproxy.proxy._http_c (yarl's test_quoting_c_loaded)."""
    if native.NO_EXTENSIONS:
        pytest.skip("extensions disabled on purpose")
    importlib.import_module("lbproxy.proxy._http_c")
    assert http.NATIVE


NAMES = st.sampled_from([
    b"host", b"content-length", b"transfer-encoding", b"connection", b"expect",
    b"x-forwarded-for", b"via", b"x-request-id", b"upgrade", b"keep-alive", b"te",
    b"trailer", b"proxy-connection", b"x-custom", b"range", b"cookie", b"x-drop",
])
VALUES = st.one_of(
    st.sampled_from([
        b"chunked", b"gzip, chunked", b"chunked, gzip", b"Chunked", b" chunked ", b"close",
        b"keep-alive", b"upgrade", b"x-drop, close", b"100-continue", b"5", b"0", b"",
        b"12345678901234567890", b"1,1", b"a.example", b"a b", b"abc-123", b"[::1]:80",
        b"1.0 edge", b"10.0.0.1",
    ]),
    st.binary(max_size=12),
)
HEADERS = st.lists(st.tuples(NAMES, VALUES), max_size=8)
TARGETS = st.one_of(
    st.sampled_from([b"/", b"/a?b=c", b"*", b"http://h/p", b"https://H:1?q", b"http://u@h/",
                     b"ftp://x/", b"/a#f", b"x", b"/?", b"http://", b"HTTP://h"]),
    st.binary(max_size=16),
)


@settings(max_examples=400, deadline=None)
@given(
    method=st.sampled_from([b"GET", b"POST", b"HEAD", b"OPTIONS", b"PUT"]),
    target=TARGETS,
    minor=st.sampled_from([0, 1]),
    headers=HEADERS,
)
def test_analyse_request_agrees(method: bytes, target: bytes, minor: int,
                                headers: list[tuple[bytes, bytes]]) -> None:
    native = load("native")
    a = _http_py.analyse_request(method, target, minor, headers, b"127.0.0.1", b"http")
    b = native.analyse_request(method, target, minor, headers, b"127.0.0.1", b"http")
    assert _masked(a) == _masked(b)


def _masked(result: tuple) -> tuple:
    """A result with a freshly generated request id replaced by a placeholder."""
    head = re.sub(rb"x-request-id: [0-9a-f]{24}\r\n", b"x-request-id: FRESH\r\n", result[-1])
    return (*result[:-1], head)


@settings(max_examples=400, deadline=None)
@given(
    status=st.sampled_from([100, 200, 204, 206, 304, 404, 500, 599, 700]),
    minor=st.sampled_from([0, 1]),
    headers=HEADERS,
    head_request=st.booleans(),
    client_minor=st.sampled_from([0, 1]),
    keep_alive=st.booleans(),
)
def test_analyse_response_agrees(status: int, minor: int, headers: list[tuple[bytes, bytes]],
                                 head_request: bool, client_minor: int, keep_alive: bool) -> None:
    native = load("native")
    args = (status, minor, headers, head_request, client_minor, keep_alive)
    assert _http_py.analyse_response(*args) == native.analyse_response(*args)


@settings(max_examples=300, deadline=None)
@given(value=st.binary(max_size=140))
def test_request_id_validation_agrees(value: bytes) -> None:
    assert _http_py.valid_request_id(value) == load("native").valid_request_id(value)


@settings(max_examples=300, deadline=None)
@given(target=TARGETS)
def test_split_target_agrees(target: bytes) -> None:
    assert _http_py.split_target(target) == load("native").split_target(target)


def test_request_head_serialisation(impl: ModuleType) -> None:
    """A golden head: hop-by-hop gone, framing re-stated, our headers appended."""
    result = impl.analyse_request(
        b"POST", b"/up?x=1", 1,
        [(b"host", b"v.example"), (b"connection", b"x-a"), (b"x-a", b"1"), (b"x-b", b"2"),
         (b"transfer-encoding", b"chunked"), (b"x-request-id", b"r1")],
        b"10.1.2.3", b"https",
    )
    assert result == (
        0, b"v.example", b"/up", b"x=1", 2, 0, 0,
        b"POST /up?x=1 HTTP/1.1\r\nhost: v.example\r\nx-b: 2\r\n"
        b"transfer-encoding: chunked\r\nx-forwarded-for: 10.1.2.3\r\n"
        b"x-forwarded-proto: https\r\nvia: 1.1 lbproxy\r\nx-request-id: r1\r\n\r\n",
    )


def test_response_head_serialisation(impl: ModuleType) -> None:
    """A golden response head for an HTTP/1.1 client with keep-alive."""
    result = impl.analyse_response(
        200, 1, [(b"content-length", b"2"), (b"keep-alive", b"t=1"), (b"server", b"o")],
        False, 1, True,
    )
    assert result == (0, 1, 1, 2, True, True,
                      b"HTTP/1.1 200 OK\r\nserver: o\r\ncontent-length: 2\r\n"
                      b"via: 1.1 lbproxy\r\n\r\n")


class _Stop(Exception):
    pass


@settings(max_examples=200, deadline=None)
@given(fields=st.lists(st.tuples(st.binary(min_size=1, max_size=20), st.binary(max_size=40)),
                       max_size=30),
       max_bytes=st.integers(1, 600), max_count=st.integers(1, 40))
def test_head_collector_agrees(fields: list[tuple[bytes, bytes]], max_bytes: int,
                               max_count: int) -> None:
    def collect(module: ModuleType) -> tuple[list[tuple[bytes, bytes]], int, bool]:
        class Collector(module.HeadCollector):  # type: ignore[name-defined]
            def head_too_large(self) -> None:
                raise _Stop

        c = Collector()
        c.max_header_bytes, c.max_headers, c.in_head = max_bytes, max_count, True
        stopped = False
        try:
            for name, value in fields:
                c.on_header(name, value)
        except _Stop:
            stopped = True
        return c.headers, c.header_bytes, stopped

    assert collect(_http_py) == collect(load("native"))


def test_fresh_request_ids_are_24_hex_and_distinct(impl: ModuleType) -> None:
    ids = {impl.new_request_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(len(i) == 24 and set(i) <= set(b"0123456789abcdef") for i in ids)


HOSTS = st.one_of(
    st.sampled_from([
        b"", b"a.example", b"a.example:80", b"a.example:", b"[::1]", b"[::1]:8080", b"[]",
        b"[::1", b"[::1]x", b"a:b", b"a:80:90", b"xn--bcher-kva.example", b"%41", b"[v1.x]",
        b"a b", b"a/b", b"127.0.0.1:65536", b":80", b"[::1]:",
    ]),
    st.binary(max_size=24),
    st.text(alphabet="ab:[]%.1 -~/", max_size=16).map(str.encode),
)


@settings(max_examples=500, deadline=None)
@given(value=HOSTS)
def test_valid_host_agrees(value: bytes) -> None:
    assert _http_py.valid_host(value) == load("native").valid_host(value)
