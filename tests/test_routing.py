"""Routing: first match wins over prefix, methods, host and headers; hash keys per kind."""

import string
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbproxy.balance.gate import Cluster
from lbproxy.proxy.routing import Route, Router, cookie_value, normalise_host


def _stand_in(value: object) -> Cluster:
    """A stand-in for a cluster: a Route only carries its cluster, so a name or an index
    shows which route matched."""
    return cast(Cluster, value)


A, B, C, D = map(_stand_in, ["cluster-a", "cluster-b", "cluster-c", "cluster-d"])


def _router():
    return Router([
        Route(A, path_prefix="/upload", methods=["POST", "PUT"]),
        Route(B, path_prefix="/api", host="API.example.com"),
        Route(C, path_prefix="/v/", headers={"X-Tier": "gold"}),
        Route(D, path_prefix="/v/"),
    ])


def _cluster(router, method, path, host=b"", headers=()):
    route = router.match(method, path, host, list(headers))
    return None if route is None else route.cluster


def test_first_matching_route_wins_in_order():
    r = Router([Route(A, path_prefix="/"), Route(B, path_prefix="/v/")])
    assert _cluster(r, b"GET", b"/v/1/2") == A  # the earlier, broader route wins


@pytest.mark.parametrize(
    ("method", "path", "host", "headers", "want"),
    [
        (b"POST", b"/upload/x", b"", (), A),
        (b"PUT", b"/upload", b"", (), A),
        (b"GET", b"/upload/x", b"", (), None),  # method excluded, nothing else has /upload
        (b"GET", b"/api/q", b"api.example.com", (), B),
        (b"GET", b"/api/q", b"API.Example.COM:8443", (), B),  # case-insensitive, port ignored
        (b"GET", b"/api/q", b"api.example.com.", (), B),  # root-label dot
        (b"GET", b"/api/q", b"other.example.com", (), None),
        (b"GET", b"/v/1/2", b"", ((b"x-tier", b"gold"),), C),
        (b"GET", b"/v/1/2", b"", ((b"x-tier", b"silver"),), D),  # exact value only
        (b"GET", b"/v/1/2", b"", ((b"x-other", b"1"), (b"x-tier", b"gold")), C),
        (b"GET", b"/v/1/2", b"", (), D),
        (b"GET", b"/nothing", b"", (), None),  # → 404
    ],
)
def test_match_conditions(method, path, host, headers, want):
    assert _cluster(_router(), method, path, host, headers) == want


def test_ipv6_host_port_is_ignored():
    assert normalise_host(b"[::1]:8080") == b"[::1]"
    r = Router([Route(A, path_prefix="/", host="[::1]")])
    assert _cluster(r, b"GET", b"/", b"[::1]:8080") == A


def test_path_regex_key_is_the_same_for_every_segment_of_a_video():
    route = Route(A, hash_on="path_regex:^/v/([^/]+)/")
    keys = {route.hash_key(f"/v/abc123/{i}.ts".encode(), b"", []) for i in range(50)}
    assert keys == {b"abc123"}
    assert route.hash_key(b"/v/other/1.ts", b"", []) == b"other"
    assert route.hash_key(b"/elsewhere", b"", []) == b"/elsewhere"  # no match → path


def test_default_key_is_the_path():
    assert Route(A).hash_key(b"/v/1/2", b"a=b", []) == b"/v/1/2"
    assert Route(A, hash_on="path").hash_key(b"/x", b"", []) == b"/x"


def test_header_key_names_are_case_insensitive():
    route = Route(A, hash_on="header:X-User")
    assert route.hash_key(b"/", b"", [(b"x-user", b"u1")]) == b"u1"
    assert route.hash_key(b"/", b"", [(b"x-other", b"u1")]) == b""


@pytest.mark.parametrize(
    ("query", "want"),
    [
        (b"sid=42", b"42"),
        (b"a=1&sid=42&sid=43", b"42"),  # first occurrence
        (b"sids=1&xsid=2", b""),
        (b"sid", b""),  # present without a value
        (b"sid=a%20b", b"a%20b"),  # not percent-decoded (documented)
        (b"", b""),
    ],
)
def test_query_key(query, want):
    assert Route(A, hash_on="query:sid").hash_key(b"/", query, []) == want


@pytest.mark.parametrize(
    ("cookies", "want"),
    [
        ([b"sid=abc"], b"abc"),
        ([b"a=1; sid=abc; b=2"], b"abc"),
        ([b"a=1", b"sid=zzz"], b"zzz"),  # split over several Cookie fields (RFC 9113 §8.2.3)
        ([b'sid="quoted"'], b"quoted"),  # DQUOTEd cookie-value (RFC 6265 §4.1.1)
        ([b"xsid=1; sidx=2"], b""),
        ([], b""),
    ],
)
def test_cookie_key(cookies, want):
    headers = [(b"cookie", c) for c in cookies]
    assert Route(A, hash_on="cookie:sid").hash_key(b"/", b"", headers) == want


def test_cookie_value_none_when_absent_but_empty_when_empty():
    assert cookie_value([(b"cookie", b"sid=")], b"sid") == b""
    assert cookie_value([(b"cookie", b"a=1")], b"sid") is None


def test_max_body_bytes_route_override_else_default():
    from lbproxy.control.config import RouteConfig

    assert Route.from_config(RouteConfig(cluster="a"), A, 100).max_body_bytes == 100
    rc = RouteConfig(cluster="a", max_body_bytes=5)
    assert Route.from_config(rc, A, 100).max_body_bytes == 5


_token = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=8)
_value = st.text(alphabet=string.ascii_letters + string.digits + "%-._~=", max_size=12)


@settings(max_examples=300)
@given(jar=st.lists(st.tuples(_token, _value), max_size=6), name=_token,
       split=st.integers(0, 6), spaces=st.booleans())
def test_cookie_value_is_the_first_pair_with_that_name(jar, name, split, spaces):
    sep = "; " if spaces else ";"
    fields = [sep.join(f"{n}={v}" for n, v in jar[:split]),
              sep.join(f"{n}={v}" for n, v in jar[split:])]
    headers = [(b"cookie", f.encode()) for f in fields if f]
    want = next((v.encode() for n, v in jar if n == name), None)
    assert cookie_value(headers, name.encode()) == want


@settings(max_examples=300)
@given(pairs=st.lists(st.tuples(_token, _value), max_size=6), name=_token)
def test_query_key_is_the_first_value_with_that_name(pairs, name):
    query = "&".join(f"{n}={v}" for n, v in pairs).encode()
    want = next((v.encode() for n, v in pairs if n == name), b"")
    assert Route(A, hash_on=f"query:{name}").hash_key(b"/", query, []) == want


@settings(max_examples=300)
@given(routes=st.lists(st.tuples(st.sampled_from(["/", "/a", "/a/b", "/b"]),
                                 st.sampled_from([None, ("GET",), ("POST", "PUT")])),
                       min_size=1, max_size=5),
       path=st.sampled_from([b"/", b"/a", b"/a/b/c", b"/b/1", b"/c"]),
       method=st.sampled_from([b"GET", b"POST", b"DELETE"]))
def test_router_agrees_with_a_linear_reference(routes, path, method):
    compiled = Router([Route(_stand_in(i), path_prefix=p, methods=m)
                       for i, (p, m) in enumerate(routes)])
    want = next((i for i, (p, m) in enumerate(routes)
                 if path.startswith(p.encode()) and (m is None or method.decode() in m)), None)
    got = compiled.match(method, path, b"", [])
    assert (None if got is None else got.cluster) == want
