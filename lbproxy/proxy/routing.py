"""Routing: which route (and so which cluster) a request goes to, and its hash key.

Owns `Router` (first match wins, as documented for `[[routes]]`) and `Route.hash_key`. Everything a
route needs is compiled when the snapshot is built: `match()` and `hash_key()` run per
request and never compile a regex or parse config.
Must not touch the selectors' internals: a route only hands its cluster a key.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, final

from lbproxy.control.config import PRIORITIES

if TYPE_CHECKING:
    from lbproxy.balance.gate import Cluster
    from lbproxy.control.config import RouteConfig

Headers = Sequence[tuple[bytes, bytes]]
KeyFunction = Callable[[bytes, bytes, Headers], bytes]

_OWS = b" \t"  # RFC 9110 §5.6.3 optional whitespace


def normalise_host(host: bytes) -> bytes:
    """Lower-case a Host value and drop its port (``[v6]:port`` too); RFC 9110 §7.2, §4.2.3."""
    host = host.strip(_OWS).lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end >= 0 else host
    colon = host.find(b":")
    host = host[:colon] if colon >= 0 else host
    # A fully qualified name may end with the root label's dot (RFC 1034 §3.1).
    return host[:-1] if host.endswith(b".") else host


def _config_host(host: str) -> bytes:
    # Requests carry A-labels (RFC 5890 §2.3.2.1), so a configured U-label is converted once.
    try:
        return normalise_host(host.encode("idna"))
    except UnicodeError:
        return normalise_host(host.encode())


def _header_key(name: bytes) -> KeyFunction:
    def key(path: bytes, query: bytes, headers: Headers) -> bytes:
        for n, v in headers:
            if n == name:
                return v
        return b""

    return key


def _query_key(name: bytes) -> KeyFunction:
    # application/x-www-form-urlencoded pairs split on "&" and the first "=" (WHATWG URL
    # §5.1). Names and values are compared and returned raw, NOT percent-decoded: a key
    # only has to be stable, and clients that encode a value differently get different keys.
    def key(path: bytes, query: bytes, headers: Headers) -> bytes:
        if not query:
            return b""
        for pair in query.split(b"&"):
            n, _, v = pair.partition(b"=")
            if n == name:
                return v
        return b""

    return key


def cookie_value(headers: Headers, name: bytes) -> bytes | None:
    """The value of cookie `name` across every Cookie header (RFC 6265 §5.4, §4.2.1)."""
    # cookie-string = cookie-pair *( ";" SP cookie-pair ); HTTP/2 may split it over several
    # Cookie fields (RFC 9113 §8.2.3), so every one is read. Whitespace around pairs is
    # tolerated like browsers do; a DQUOTEd cookie-value (§4.1.1) is returned unquoted.
    for n, v in headers:
        if n != b"cookie":
            continue
        for pair in v.split(b";"):
            cn, eq, cv = pair.partition(b"=")
            if eq and cn.strip(_OWS) == name:
                cv = cv.strip(_OWS)
                if len(cv) >= 2 and cv[0] == 0x22 and cv[-1] == 0x22:
                    cv = cv[1:-1]
                return cv
    return None


def _cookie_key(name: bytes) -> KeyFunction:
    def key(path: bytes, query: bytes, headers: Headers) -> bytes:
        value = cookie_value(headers, name)
        return b"" if value is None else value

    return key


def _path_regex_key(pattern: str) -> KeyFunction:
    search = re.compile(pattern.encode()).search

    def key(path: bytes, query: bytes, headers: Headers) -> bytes:
        m = search(path)
        if m is None:
            return path
        group = m.group(1)
        return path if group is None else group

    return key


def _path_key(path: bytes, query: bytes, headers: Headers) -> bytes:
    return path


def compile_hash_on(hash_on: str | None) -> KeyFunction:
    """The key function for a route's ``hash_on`` (already validated by config)."""
    if hash_on is None or hash_on == "path":
        return _path_key
    kind, _, arg = hash_on.partition(":")
    if kind == "path_regex":
        return _path_regex_key(arg)
    if kind == "header":
        return _header_key(arg.lower().encode("latin-1"))
    if kind == "query":
        return _query_key(arg.encode())
    if kind == "cookie":
        return _cookie_key(arg.encode())
    raise ValueError(f"unknown hash_on {hash_on!r}")


@final
class Route:
    """One compiled route: its match conditions, target cluster and hash-key function."""

    __slots__ = ("_cohort_key", "_headers", "_host", "_key", "_methods", "_prefix", "cluster",
                 "max_body_bytes", "priority")

    def __init__(
        self,
        cluster: Cluster,
        *,
        path_prefix: str = "/",
        methods: Sequence[str] | None = None,
        host: str | None = None,
        headers: dict[str, str] | None = None,
        hash_on: str | None = None,
        max_body_bytes: int = 0,
        priority: str = "normal",
        cohort_on: str | None = None,
    ) -> None:
        self.cluster = cluster
        self.max_body_bytes = max_body_bytes
        self.priority = PRIORITIES.index(priority)  # 0 critical, 1 normal, 2 sheddable
        self._cohort_key = None if cohort_on is None else compile_hash_on(cohort_on)
        # A plain byte prefix, as Envoy's route `prefix`: "/upload" also matches "/uploads";
        # write "/upload/" to require a path segment boundary.
        self._prefix = path_prefix.encode()
        self._methods = frozenset(m.encode() for m in methods) if methods else None
        self._host = _config_host(host) if host else None
        # Header names are case-insensitive (RFC 9110 §5.1); the data plane lower-cases them.
        self._headers = (
            tuple((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
            if headers
            else None
        )
        self._key = compile_hash_on(hash_on)

    @classmethod
    def from_config(cls, rc: RouteConfig, cluster: Cluster, default_max_body: int) -> Route:
        """Compile a `RouteConfig` against its (already built) cluster."""
        return cls(
            cluster,
            path_prefix=rc.path_prefix,
            methods=rc.methods,
            host=rc.host,
            headers=rc.headers,
            hash_on=rc.hash_on,
            max_body_bytes=default_max_body if rc.max_body_bytes is None else rc.max_body_bytes,
            priority=rc.priority,
            cohort_on=rc.cohort_on,
        )

    def headers_match(self, headers: Headers) -> bool:
        """Whether every configured header is present with exactly its value."""
        if self._headers is None:
            return True
        for want_name, want_value in self._headers:
            for n, v in headers:
                if n == want_name and v == want_value:
                    break
            else:
                return False
        return True

    def hash_key(self, path: bytes, query: bytes, headers: Headers) -> bytes:
        """The selector key for this request (b"" when the named part is absent)."""
        return self._key(path, query, headers)

    def cohort(self, client: bytes, path: bytes, query: bytes, headers: Headers) -> int:
        """The request's cohort, 0-127: a stable hash of its `cohort_on` key (the client
        address by default), the same in every worker (CRC-32, not Python's salted hash)."""
        key = self._cohort_key
        return zlib.crc32(client if key is None else key(path, query, headers)) & 127


@final
class Router:
    """An ordered list of routes; the first that matches wins (as documented)."""

    __slots__ = ("routes",)

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)

    def match(self, method: bytes, path: bytes, host: bytes, headers: Headers) -> Route | None:
        """The first route matching the request, or None (→ 404)."""
        # Conditions inlined here (not a Route method call per route) because this loop runs
        # per request; cheapest and most selective test first, Host normalised only if a
        # host-conditioned route gets that far, and then once.
        norm: bytes | None = None
        for route in self.routes:
            if not path.startswith(route._prefix):
                continue
            if route._methods is not None and method not in route._methods:
                continue
            if route._host is not None:
                if norm is None:
                    norm = normalise_host(host)
                if norm != route._host:
                    continue
            if route._headers is not None and not route.headers_match(headers):
                continue
            return route
        return None
