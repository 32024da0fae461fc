# cython: cdivision=False, annotation_typing=False
"""Client side: the per-connection Protocol that parses requests and drives each exchange.

Owns the request parser glue (httptools/llhttp in strict mode plus the checks it leaves
to us), keep-alive and pipelining (requests answered strictly in order, read-ahead
bounded), streaming the request body upstream with backpressure, client-side timeouts and
the single place where a request meets the cluster gate: ``cluster.begin()`` once per
request, ``lease.end()`` exactly once per lease. Must not touch the control plane beyond
reading the snapshot once per request.

One source, two builds: this module runs as plain Python (``LBPROXY_NO_EXTENSIONS=1``) and
is what Cython compiles into ``lbproxy.proxy._client_c``, with ``_client_c.pxd`` beside it
declaring the C types: final ``cdef`` classes with typed fields, internal methods as C
calls, the constants as C values. Nothing here may depend on which build runs it; import
the classes through lbproxy/proxy/protocols.py, which picks the build.
"""

from __future__ import annotations

try:
    import cython
except ImportError:  # pragma: no cover - Python without Cython installed
    from lbproxy.native import pure_mode as cython

import asyncio
import logging
import math
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import httptools

from lbproxy.balance.gate import WAIT, Refusal
from lbproxy.policies.admission_queue import Waiter
from lbproxy.proxy import errors
from lbproxy.proxy.http import analyse_request

if not cython.compiled:  # compiled, _client_c.pxd cimports these as C declarations
    from lbproxy.codes import (
        E_EXPECTATION,
        E_TRANSFER_CODING,
        F_CLOSE,
        F_EXPECT_CONTINUE,
        F_UPGRADE,
        FRAME_CHUNKED,
        FRAME_LENGTH,
        FRAME_NONE,
        OK,
        OUTCOME_CLIENT_ABORT,
        OUTCOME_CONNECT_FAILED,
        OUTCOME_HTTP_5XX,
        OUTCOME_OK,
        OUTCOME_RESET,
        OUTCOME_TIMEOUT,
    )
    from lbproxy.proxy.http import HeadCollector

    if TYPE_CHECKING:
        from lbproxy.balance.gate import Cluster, Lease
        from lbproxy.proxy.pool import UpstreamConnection, UpstreamPool

if TYPE_CHECKING:
    from lbproxy.control.snapshot import Snapshot
    from lbproxy.proxy.errors import ProxyError
    from lbproxy.proxy.plane import DataPlane

log = logging.getLogger("lbproxy.proxy")

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
CHUNK_END = b"0\r\n\r\n"
CRLF = b"\r\n"
# Body bytes held for an exchange that has no upstream connection yet (connecting, or a
# pipelined request waiting its turn) before the client is paused.
BUFFER_LIMIT = 256 * 1024
# Pipelined requests parsed ahead of the one being answered before reading pauses, and
# the slice in which bytes arriving behind an active request are parsed, so a read full of
# tiny pipelined requests is not parsed (and queued) all at once.
PIPELINE_LIMIT = 16
PIPELINE_SLICE = 4096
# RFC 9110 §9.2.2: only idempotent requests may be retried after a connection failure.
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

# Why the client is not being read (bits; reading resumes when none is left).
P_UPSTREAM = 1  # the backend's write buffer is above its high-water mark
P_BUFFER = 2  # too much body held while no upstream connection is attached
P_PIPELINE = 4  # too many pipelined requests parsed ahead
P_STOP = 8  # nothing more will be parsed on this connection

# Route priorities (lbproxy.control.config.PRIORITIES) and the self-protection step at
# which responses close their connection (lbproxy/proxy/protection.py).
SHEDDABLE = 2
PROTECT_CLOSE = 3

# What the client-side deadline means when it passes.
K_NONE = 0
K_IDLE = 1  # keep-alive connection with no request: close silently
K_HEAD = 2  # request head incomplete: 408
K_BODY = 3  # no request body byte for too long: 408
K_STALL = 4  # the client stopped reading our response: close
K_LINGER = 5  # an error was sent and our side half-closed: now close for good
# What the upstream-side deadline means when it passes.
U_NONE = 0
U_CONNECT = 1  # connecting (or waiting for a pooled connection): 504
U_HEADERS = 2  # request sent, no response head: 504
U_IDLE = 3  # no byte from the backend for too long: 504, or abort mid-body

# How long to keep discarding what a client still sends after an error response. Closing
# with unread input makes the kernel send RST, which can destroy the error response before
# the client reads it (RFC 9112 §9.6: half-close first, then close; nginx lingering_close).
LINGER_S = 2.0

_INF = math.inf
# Bound once (uvloop's includes/stdlib.pxi habit): a module global costs a dict lookup per
# use in Python, and compiled these are C-level references.
_now_ns = time.monotonic_ns
RequestParser = httptools.HttpRequestParser
ParserUpgrade = httptools.HttpParserUpgrade
ParserError = httptools.HttpParserError


class _Reject(Exception):
    """Raised inside a parser callback to stop parsing; the error is on the connection."""


class Exchange:
    """One request/response exchange (per request; slots only, no dicts)."""

    __slots__ = (
        "abandoned",
        "body_done",
        "body_received",
        "conn",
        "connect_task",
        "content_length",
        "flags",
        "framing",
        "head_request",
        "headers",
        "host",
        "keep_alive",
        "lease",
        "max_body",
        "method",
        "minor",
        "path",
        "pending",
        "pending_bytes",
        "pool",
        "query",
        "replay",
        "resent",
        "retried",
        "snapshot",
        "status",
        "t_client_body_idle",
        "t_connect",
        "t_upstream_headers",
        "t_upstream_idle",
        "tried",
        "up",
        "upstream_head",
        "waiter",
        "waiting_pool",
    )

    # For type checkers; new() sets each one (_client_c.pxd types them in C).
    abandoned: bool
    body_done: bool
    body_received: int
    conn: ClientConnection
    connect_task: asyncio.Future[Any] | None
    content_length: int
    flags: int
    framing: int
    head_request: bool
    headers: list[tuple[bytes, bytes]]
    host: bytes
    keep_alive: bool
    lease: Lease | None
    max_body: int
    method: bytes
    minor: int
    path: bytes
    pending: list[bytes] | None
    pending_bytes: int
    pool: UpstreamPool | None
    query: bytes
    replay: bytes | None
    resent: bool
    retried: bool
    snapshot: Snapshot
    status: int
    t_client_body_idle: float
    t_connect: float
    t_upstream_headers: float
    t_upstream_idle: float
    tried: tuple[int, ...]
    up: UpstreamConnection | None
    upstream_head: bytes
    waiter: Waiter | None
    waiting_pool: bool

    @staticmethod
    def new(
        conn: ClientConnection,
        snapshot: Snapshot,
        method: bytes,
        minor: int,
        headers: list[tuple[bytes, bytes]],
        analysed: tuple[int, bytes, bytes, bytes, int, int, int, bytes],
    ) -> Exchange:
        """An exchange for one request head (`analysed` is analyse_request's result).

        A factory, not ``__init__``: compiled, it fills a C struct with no argument tuple.
        """
        self = Exchange.__new__(Exchange)
        # `snapshot` is conn._snap, whose timeouts conn cached when it read it.
        self.t_connect = conn._t_connect
        self.t_client_body_idle = conn._t_client_body_idle
        self.t_upstream_headers = conn._t_upstream_headers
        self.t_upstream_idle = conn._t_upstream_idle
        _, self.host, self.path, self.query, framing, clen, flags, self.upstream_head = analysed
        self.conn = conn
        self.snapshot = snapshot
        self.method = method
        self.minor = minor
        self.headers = headers
        self.framing = framing
        self.content_length = clen
        self.flags = flags
        self.head_request = method == b"HEAD"
        self.keep_alive = not flags & (F_CLOSE | F_UPGRADE)
        self.body_done = framing == FRAME_NONE or (framing == FRAME_LENGTH and clen == 0)
        self.body_received = 0
        self.pending = []
        self.pending_bytes = 0
        self.max_body = 0
        self.lease = None
        self.pool = None
        self.up = None
        self.connect_task = None
        self.waiting_pool = False
        self.abandoned = False
        self.retried = False  # sent again after a failure (so no second 100 Continue)
        self.resent = False  # sent again after a backend dropped it (at most once)
        self.status = 0
        self.tried = ()  # slots of the attempts that failed (retries)
        self.replay = None  # the whole body, when it went in the first write
        self.waiter = None  # set while the request waits in its cluster's admission queue
        return self


class ClientConnection(HeadCollector):
    """One client connection: parse, validate, route, relay; keep-alive and pipelining."""

    __slots__ = (
        "_active",
        "_begun",
        "_client_ip",
        "_close_asked",
        "_closing",
        "_head_limit",
        "_head_raw",
        "_held",
        "_lim_snap",
        "_loop",
        "_max_request_line",
        "_no_more",
        "_parser",
        "_parsing",
        "_pause_bits",
        "_pending_error",
        "_plane",
        "_pools",
        "_proto",
        "_queue",
        "_raw_left",
        "_reject",
        "_saved_deadline",
        "_saved_kind",
        "_snap",
        "_t_client_body_idle",
        "_t_client_idle",
        "_t_connect",
        "_t_request_headers",
        "_t_upstream_headers",
        "_t_upstream_idle",
        "_time",
        "_url",
        "deadline",
        "deadline_kind",
        "transport",
        "up_deadline",
        "up_kind",
        "up_last",
        "writing_paused",
    )

    def __init__(self, plane: DataPlane) -> None:
        super().__init__()
        self._plane = plane
        self._loop = plane.loop
        self._time = self._loop.time
        self._pools = plane.pools  # read directly: no Python frame for plane.pool()
        self._lim_snap: Snapshot | None = None
        self._parser = RequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._client_ip = b""
        self._proto = b"http"
        self._snap: Snapshot = plane.snapshot
        self._url = b""
        self._head_raw = 0
        self._begun = 0  # requests begun during the current _feed
        self._head_limit = 0
        self._parsing: Exchange | None = None  # the request whose body is being parsed
        self._active: Exchange | None = None  # the request being answered
        self._queue: deque[Exchange] = deque()  # pipelined requests waiting their turn
        self._held = b""  # unparsed pipelined bytes, once the queue is full
        self._raw_left = 0  # > 0: Content-Length body bytes relayed without the parser
        self._reject: ProxyError | None = None
        self._pending_error: ProxyError | None = None  # answer after the active exchange
        self._no_more = False  # nothing after the active exchange (upgrade, parse error)
        self._close_asked = False  # a request said "close" (or was HTTP/1.0 without keep-alive)
        self._closing = False
        self._pause_bits = 0
        self.writing_paused = False
        self.deadline = _INF
        self.deadline_kind = K_NONE
        self._saved_deadline = _INF
        self._saved_kind = K_NONE
        self.up_deadline = _INF
        self.up_kind = U_NONE
        # loop time of the last byte from the backend; the ticker turns it into the idle
        # deadline, so a body chunk costs one clock read and no deadline arithmetic
        self.up_last = 0.0
        # Last, so that nothing above resets what it caches (_head_limit among them).
        self._cache_snapshot(self._snap)

    # -- asyncio.Protocol: client transport ------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register with the plane and start the keep-alive idle clock."""
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._client_ip = peer[0].encode("ascii") if peer else b"unknown"
        if transport.get_extra_info("sslcontext") is not None:
            self._proto = b"https"
        self._plane.register(self)
        if self._plane.draining:
            self._close()
            return
        self.deadline = self._time() + self._t_client_idle
        self.deadline_kind = K_IDLE

    def data_received(self, data: bytes) -> None:
        """Feed the request parser (all the work happens in its callbacks)."""
        if self._closing:
            return
        if self._raw_left:
            data = self._relay_raw(data)
            if not data:
                return
        # the common case is one request per read: parsed in one go
        ok = self._feed(data) if len(data) <= PIPELINE_SLICE else self._feed_sliced(data)
        ex = self._parsing
        if ok and ex is not None and ex.framing == FRAME_LENGTH and ex is self._active:
            # The rest of this request is a Content-Length body (RFC 9112 §6.2): relay the
            # next reads as they are, without the parser's copy and callbacks per read.
            self._raw_left = ex.content_length - ex.body_received

    def _relay_raw(self, data: bytes) -> bytes:
        """Pass Content-Length body bytes on; returns what follows the body, if anything."""
        left = self._raw_left
        n = len(data)
        try:
            if n < left:
                self._raw_left = left - n
                self.on_body(data)
                return b""
            self._raw_left = 0
            self.on_body(data[:left] if n > left else data)
        except _Reject:
            return b""  # over the route's limit: already answered and closing
        # The parser still expects those bytes: a fresh one reads whatever comes next.
        self._parser = RequestParser(self)
        self.on_message_complete()
        return b"" if self._closing else data[left:]

    def _feed_sliced(self, data: bytes) -> bool:
        """Parse pipelined bytes a slice at a time, holding the rest once the queue is full."""
        while data:
            if len(self._queue) >= PIPELINE_LIMIT:
                # Read-ahead stops here: what is left waits unparsed until the queue drains.
                self._held = data
                self._pause(P_PIPELINE)
                return False
            ex = self._parsing
            if ex is not None and ex is self._active:
                piece, data = data, b""  # the active request's own body streams whole
            else:
                piece, data = data[:PIPELINE_SLICE], data[PIPELINE_SLICE:]
            if not self._feed(piece) or self._closing:
                return False
        return True

    def _feed(self, data: bytes) -> bool:
        """Parse `data`; False when parsing stopped for good on this connection."""
        was_in_head = self.in_head
        if was_in_head:
            self._head_raw += len(data)
        # Between requests, a request that begins in this piece begins at its first byte.
        at_boundary = not was_in_head and self._parsing is None
        self._begun = 0
        try:
            self._parser.feed_data(data)
        except ParserUpgrade:
            # An Upgrade request (no body, checked in analyse_request) was forwarded as a
            # plain request; what follows it is another protocol, which we do not speak.
            self._no_more = True
            self._pause(P_STOP)
            if self._active is None:
                self._close()
            return False
        except ParserError as exc:
            if self._closing:
                return False
            if self._close_asked and self._parsing is None and not self.in_head:
                # RFC 9112 §9.6: nothing after a request with "close" is processed; llhttp
                # stops at such bytes, which are ignored (not answered with a 400).
                self._no_more = True
                self._pause(P_STOP)
                if self._active is None:
                    self._close()
                return False
            err = self._reject
            self._reject = None
            if err is None:
                cause = exc.__context__
                if cause is not None and not isinstance(cause, _Reject):
                    log.error("request parser callback failed", exc_info=cause)
                err = (
                    errors.VERSION_NOT_SUPPORTED
                    if "HTTP version" in str(exc)
                    else errors.BAD_REQUEST
                )
            self._parse_failed(err)
            return False
        if self.in_head and not was_in_head and at_boundary and self._begun == 1:
            # The head started here and is still open: all of `data` is head (without
            # this, one oversized first segment would wait for the 408, not get its 431).
            self._head_raw = len(data)
            if self._parser.get_http_version() in ("0.0", "0.9") and b"\n" in data.lstrip(b"\r\n"):
                # The request line ended without a version: HTTP/0.9 ("GET /path" CRLF).
                # llhttp would wait for header lines a 0.9 client never sends (then 408).
                self._parse_failed(errors.VERSION_NOT_SUPPORTED)
                return False
        if self.in_head and self._head_raw > self._head_limit:
            # One header line (or the head) keeps growing past every limit: 431 without
            # waiting for its end (httptools buffers a field until it is complete).
            self._parse_failed(errors.HEADERS_TOO_LARGE)
            return False
        return True

    def eof_received(self) -> bool:
        """The client half-closed: answer a complete request, abandon an incomplete one."""
        if self._closing:
            return False  # nothing more to send: let the transport close
        self._no_more = True
        ex = self._active
        if ex is not None and ex.body_done and self._parsing is None and not self.in_head:
            return True  # keep our side open to send the response (RFC 9112 §9.6)
        if ex is not None:
            # EOF mid-request: the upstream exchange must not look complete.
            self._abandon(ex, OUTCOME_CLIENT_ABORT)
        self._close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """The client went away: abandon the exchange in progress (never reused upstream)."""
        self._closing = True
        self._plane.unregister(self)
        ex = self._active
        if ex is not None:
            self._abandon(ex, OUTCOME_CLIENT_ABORT)
        for queued in self._queue:
            queued.abandoned = True
        self._queue.clear()

    def pause_writing(self) -> None:
        """Our buffer towards the client is full: stop reading the backend."""
        self.writing_paused = True
        ex = self._active
        if ex is not None and ex.up is not None and ex.up.transport is not None:
            ex.up.transport.pause_reading()
        # A client that stops reading is on the client-idle clock, not the backend's.
        self._saved_deadline, self._saved_kind = self.deadline, self.deadline_kind
        self.deadline = self._time() + self._t_client_idle
        self.deadline_kind = K_STALL
        if self.up_kind == U_IDLE:
            self.up_deadline = _INF

    def resume_writing(self) -> None:
        """The client caught up: read the backend again."""
        self.writing_paused = False
        if self.deadline_kind == K_STALL:
            self.deadline, self.deadline_kind = self._saved_deadline, self._saved_kind
        ex = self._active
        if ex is not None and ex.up is not None and ex.up.transport is not None:
            ex.up.transport.resume_reading()
            if self.up_kind == U_IDLE:
                self.up_deadline = self._time() + ex.t_upstream_idle

    # -- httptools callbacks (request) -----------------------------------------------

    def on_message_begin(self) -> None:
        """A new request starts: read the snapshot once for it, start the head clock."""
        if self._closing or self._no_more:
            raise _Reject("connection is closing")
        snap = self._snap = self._plane.snapshot
        if snap is not self._lim_snap:
            self._cache_snapshot(snap)
        self._url = b""
        self.headers = []
        self.header_bytes = 0
        self.in_head = True
        self._head_raw = 0
        self._begun += 1
        if self._active is None or self._active.body_done:
            self.deadline = self._time() + self._t_request_headers
            self.deadline_kind = K_HEAD

    def _cache_snapshot(self, snap: Snapshot) -> None:
        """Copy `snap`'s limits and timeouts into fields (C values when compiled).

        Run only when the controller swapped the snapshot, so that a request reads no
        config attributes: `_snap` is assigned in __init__ and on_message_begin only.
        """
        lim = snap.limits
        t = snap.timeouts
        self._lim_snap = snap
        self.max_header_bytes = lim.max_header_bytes
        self.max_headers = lim.max_headers
        self._max_request_line = lim.max_request_line
        self._head_limit = lim.max_request_line + lim.max_header_bytes + 4 * lim.max_headers + 4
        self._t_request_headers = t.request_headers
        self._t_client_body_idle = t.client_body_idle
        self._t_client_idle = t.client_idle
        self._t_connect = t.connect
        self._t_upstream_headers = t.upstream_headers
        self._t_upstream_idle = t.upstream_idle

    def on_url(self, url: bytes) -> None:
        """Collect the request target (it may arrive in pieces)."""
        self._url += url
        if len(self._url) > self._max_request_line:
            self._reject = errors.URI_TOO_LONG
            raise _Reject("request line too long")

    def head_too_large(self) -> None:
        """Header bytes or count passed the limits: 431."""
        self._reject = errors.HEADERS_TOO_LARGE
        raise _Reject("request headers too large")

    def on_headers_complete(self) -> None:
        """Validate the head (RFC 9112) and start, or queue, the exchange."""
        self.in_head = False
        parser = self._parser
        version = parser.get_http_version()
        if version == "1.1":
            minor = 1
        elif version == "1.0":
            minor = 0
        else:
            self._reject = errors.VERSION_NOT_SUPPORTED
            raise _Reject("unsupported HTTP version")
        method = parser.get_method()
        if method == b"CONNECT":
            self._reject = errors.UNSUPPORTED_METHOD
            raise _Reject("CONNECT")
        if len(self._url) + len(method) + 10 > self._max_request_line:
            self._reject = errors.URI_TOO_LONG
            raise _Reject("request line too long")
        analysed = analyse_request(
            method, self._url, minor, self.headers, self._client_ip, self._proto
        )
        result = analysed[0]
        if result != OK:
            self._reject = (
                errors.UNSUPPORTED_TRANSFER_CODING
                if result == E_TRANSFER_CODING
                else errors.EXPECTATION_FAILED
                if result == E_EXPECTATION
                else errors.BAD_REQUEST
            )
            raise _Reject("invalid request head")
        ex = Exchange.new(self, self._snap, method, minor, self.headers, analysed)
        self._parsing = ex
        if not ex.keep_alive:
            self._close_asked = True
        if self.deadline_kind == K_HEAD:
            self.deadline = _INF  # the head is complete; the body (if any) has its own clock
            self.deadline_kind = K_NONE
        if self._active is None:
            self._start(ex)
        else:
            self._queue.append(ex)
            if len(self._queue) >= PIPELINE_LIMIT:
                self._pause(P_PIPELINE)

    def on_body(self, data: bytes) -> None:
        """Stream one piece of request body upstream, or hold it until connected."""
        ex = self._parsing
        if ex is None or ex.abandoned:
            return
        n = len(data)
        received = ex.body_received = ex.body_received + n
        if ex.max_body and received > ex.max_body:
            # Chunked body over the route's limit: stop before forwarding the excess byte.
            self._body_too_large(ex)
            raise _Reject("body too large")
        if ex is self._active:
            self.deadline = self._time() + ex.t_client_body_idle
            self.deadline_kind = K_BODY
        up = ex.up
        if up is not None:
            transport = up.transport
            assert transport is not None
            if ex.framing == FRAME_CHUNKED:
                transport.writelines((b"%x\r\n" % n, data, CRLF))
            else:
                transport.write(data)
            return
        pending = ex.pending
        if pending is None:
            return  # the upstream exchange is over (the backend answered early)
        if ex.framing == FRAME_CHUNKED:
            pending.append(b"%x\r\n" % n)
            pending.append(data)
            pending.append(CRLF)
        else:
            pending.append(data)
        ex.pending_bytes += n
        if ex.pending_bytes > BUFFER_LIMIT:
            self._pause(P_BUFFER)

    def on_message_complete(self) -> None:
        """The request (head and body) is fully read."""
        ex = self._parsing
        self._parsing = None
        if ex is None or ex.abandoned:
            return
        if ex is self._active and self.deadline_kind == K_BODY:
            self.deadline = _INF
            self.deadline_kind = K_NONE
        if ex.body_done:
            return
        ex.body_done = True
        up = ex.up
        if up is not None:
            if ex.framing == FRAME_CHUNKED:
                assert up.transport is not None
                up.transport.write(CHUNK_END)
            up.request_complete()
            if ex.lease is not None:
                ex.lease.sent_ns = _now_ns()  # the backend's time starts here
            if not up.started:
                self.up_deadline = self._time() + ex.t_upstream_headers
                self.up_kind = U_HEADERS
        elif ex.pending is not None and ex.framing == FRAME_CHUNKED:
            ex.pending.append(CHUNK_END)

    # -- the exchange ------------------------------------------------------------------

    def _start(self, ex: Exchange) -> None:
        """Route the request and take a lease: the one call into the cluster gate."""
        self._active = ex
        plane = self._plane
        plane.inflight_requests += 1
        snap = ex.snapshot
        route = snap.router.match(ex.method, ex.path, ex.host, ex.headers)
        if route is None:
            self._local_reply(ex, errors.NO_ROUTE)
            return
        max_body = ex.max_body = route.max_body_bytes
        if max_body and (ex.content_length > max_body or ex.body_received > max_body):
            # RFC 9110 §15.5.14: refuse before forwarding a byte of an oversized body.
            self._local_reply(ex, errors.BODY_TOO_LARGE)
            return
        cluster: Cluster = route.cluster
        priority = route.priority
        if priority == SHEDDABLE and plane.protect:
            # The proxy itself is behind (lbproxy/proxy/protection.py): shed prefetch now.
            shed = cluster.protect_shed(priority)
            self._local_reply(ex, errors.refusal(shed.code, shed.retry_after))
            return
        key = route.hash_key(ex.path, ex.query, ex.headers)
        now_ns = _now_ns()
        # The cohort (a CRC-32 of the viewer) only matters to overload control.
        cohort = (0 if cluster.state.overload is None
                  else route.cohort(self._client_ip, ex.path, ex.query, ex.headers))
        gate = cluster.begin(key, now_ns, 0, (), priority, cohort)
        if type(gate) is Refusal:
            if gate is WAIT:
                # No backend has room under its limit: wait in the cluster's queue, which
                # calls admitted() or refused(). The body keeps arriving into `pending`
                # only up to BUFFER_LIMIT (the client is paused past it).
                waiter = Waiter(self, cluster, key, priority, now_ns)
                if cluster.state.overload.queue.push(waiter):
                    ex.waiter = waiter
                    return
                gate = cluster.state.overload.refusal
            self._local_reply(ex, errors.refusal(gate.code, gate.retry_after))
            return
        self._leased(ex, gate)

    def admitted(self, waiter: Waiter, lease: Lease) -> None:
        """The admission queue found room for the waiting request: go upstream."""
        ex = self._active
        if ex is None or ex.waiter is not waiter or self._closing:
            lease.end(OUTCOME_CLIENT_ABORT, _now_ns())  # gone meanwhile: give the room back
            return
        ex.waiter = None
        self._leased(ex, lease)

    def refused(self, waiter: Waiter, refusal: Refusal) -> None:
        """The admission queue shed the waiting request: 503 overloaded, Retry-After."""
        ex = self._active
        if ex is None or ex.waiter is not waiter:
            return
        ex.waiter = None
        self._local_reply(ex, errors.refusal(refusal.code, refusal.retry_after))

    def _leased(self, ex: Exchange, gate: Lease) -> None:
        """The gate admitted `ex` on a backend: connect (or reuse) and send."""
        plane = self._plane
        ex.lease = gate
        backend = gate.backend
        pool = self._pools.get((backend.host, backend.port))
        if pool is None:
            pool = plane.pool(backend.host, backend.port)
        ex.pool = pool
        now = self._time()
        self.up_deadline = now + ex.t_connect
        self.up_kind = U_CONNECT
        if not ex.body_done and self.deadline_kind != K_HEAD:
            self.deadline = now + ex.t_client_body_idle
            self.deadline_kind = K_BODY
        pool.acquire(ex)

    def first_upstream_bytes(self, ex: Exchange) -> bytes:
        """Head plus the body held so far, for a connection being attached to `ex`."""
        if ex.flags & F_EXPECT_CONTINUE and not ex.retried:
            # RFC 9110 §10.1.1: exactly one 100 Continue, sent when we start forwarding;
            # the backend never sees the Expect header, so it sends no 100 of its own.
            assert self.transport is not None
            self.transport.write(CONTINUE_100)
        pending = ex.pending
        first = ex.upstream_head
        if pending:
            body = b"".join(pending)
            first += body
            pending.clear()
            if ex.body_done:
                ex.replay = body  # the whole body went in this write: a retry can resend it
        ex.pending = None
        ex.pending_bytes = 0
        if self._pause_bits & P_BUFFER:
            self._resume(P_BUFFER)
        if ex.body_done:
            self.up_deadline = self._time() + ex.t_upstream_headers
            self.up_kind = U_HEADERS
            if ex.lease is not None:
                ex.lease.sent_ns = _now_ns()  # the backend's time starts here
        else:
            self.up_deadline = _INF
            self.up_kind = U_NONE
        return first

    def may_keep_alive(self, ex: Exchange) -> bool:
        """Whether the response to `ex` may leave this connection open (RFC 9112 §9.3)."""
        return (
            ex.keep_alive
            and ex.body_done
            and not self._plane.draining
            and self._plane.protect < PROTECT_CLOSE
            and not self._closing
            and not self._no_more
            and self._pending_error is None
        )

    def response_started(self) -> None:
        """The response head is on its way: the backend is now on the idle clock."""
        self.up_deadline = self.up_last + self._t_upstream_idle
        self.up_kind = U_IDLE
        ex = self._active
        if ex is not None and ex.lease is not None:
            ex.lease.head_ns = _now_ns()  # ... and ends here (its adaptive limit's sample)

    def response_done(self, ex: Exchange) -> None:
        """The response was fully relayed: account it, then serve the next request."""
        self._end_lease(ex, OUTCOME_HTTP_5XX if ex.status >= 500 else OUTCOME_OK)
        self._finish(ex)
        if self._pending_error is not None:
            self._send_error(self._pending_error)  # a later pipelined request was bad
        elif not ex.body_done:
            self._linger()  # answered before the request body ended: the client may be sending
        elif not ex.keep_alive:
            self._close()  # Connection: close was sent
        else:
            self._next()

    def upstream_failed(
        self, ex: Exchange, conn: UpstreamConnection, malformed: bool = False
    ) -> None:
        """The backend closed, reset or sent garbage before the response was complete."""
        ex.up = None
        if ex.abandoned or ex is not self._active:
            return
        if not conn.started:
            if (
                not malformed
                and conn.reused
                and not conn.got_bytes
                and not ex.retried
                and ex.framing == FRAME_NONE
                and ex.method in _IDEMPOTENT
                and ex.pool is not None
            ):
                # A pooled connection the backend closed while idle (RFC 9112 §9.3.1):
                # nothing was processed, so an idempotent request is sent once more.
                ex.retried = True
                ex.pending = []
                ex.pool.acquire(ex)
                return
            if (
                not malformed
                and not conn.got_bytes
                and conn.request_sent
                and not ex.resent
                and ex.method in _IDEMPOTENT
                and (ex.replay is not None
                     or (ex.body_received == 0 and ex.framing != FRAME_CHUNKED))
            ):
                # RFC 9110 §9.2.2: an idempotent request the backend dropped before any
                # response byte may be sent again, once (Envoy's "reset", nginx's "error"),
                # even after the keep-alive race's resend above met another stale connection.
                ex.retried = ex.resent = True
                ex.pending = [] if ex.replay is None else [ex.replay]
                if self._retry(ex, OUTCOME_RESET):
                    return
            self._end_lease(ex, OUTCOME_RESET)
            self._fail(ex, errors.BACKEND_FAILED)
            return
        # Mid-body: the client keeps what arrived, then the connection closes; never a
        # clean chunked end or a complete-looking response.
        self._end_lease(ex, OUTCOME_RESET)
        self._finish(ex)
        self._close()

    def connect_failed(self, ex: Exchange, exc: BaseException) -> None:
        """The TCP connect to the backend failed (refused, unreachable): 502."""
        if ex is not self._active:
            return
        # Nothing was sent, so any method may go to another backend, provided every body
        # byte received so far is still held (`pending`; None once bytes went upstream).
        if ex.pending is not None and self._retry(ex, OUTCOME_CONNECT_FAILED):
            return
        self._end_lease(ex, OUTCOME_CONNECT_FAILED)
        self._fail(ex, errors.BACKEND_CONNECT_FAILED)

    def _retry(self, ex: Exchange, outcome: int) -> bool:
        """End the failed attempt's lease; begin `ex` again on another backend if allowed."""
        lease = ex.lease
        self._end_lease(ex, outcome)  # first: outlier detection sees the failure
        if lease is None or self._closing:
            return False
        snap = ex.snapshot
        route = snap.router.match(ex.method, ex.path, ex.host, ex.headers)  # as in _start
        if route is None:
            return False
        cluster: Cluster = route.cluster
        tried = ex.tried = (*ex.tried, lease.slot)
        if len(tried) > cluster.config.retry.attempts or len(tried) >= len(cluster.backends):
            return False  # out of attempts, or of backends not yet tried (nginx's rule)
        key = route.hash_key(ex.path, ex.query, ex.headers)
        gate = cluster.begin(key, _now_ns(), len(tried), tried)
        if type(gate) is Refusal:
            return False  # e.g. past the retry budget: the failed attempt's error stands
        ex.lease = gate
        backend = gate.backend
        pool = ex.pool = self._plane.pool(backend.host, backend.port)
        self.up_deadline = self._time() + ex.t_connect
        self.up_kind = U_CONNECT
        pool.acquire(ex)
        return True

    def pause_for_upstream(self) -> None:
        """The backend's write buffer is full: stop reading the client."""
        self._pause(P_UPSTREAM)

    def resume_for_upstream(self) -> None:
        """The backend drained its write buffer: read the client again."""
        self._resume(P_UPSTREAM)

    # -- endings -----------------------------------------------------------------------

    def _end_lease(self, ex: Exchange, outcome: int) -> None:
        """End the lease exactly once (the only call to Lease.end in the data plane)."""
        lease = ex.lease
        if lease is not None:
            ex.lease = None
            lease.end(outcome, _now_ns(), ex.status)

    def _finish(self, ex: Exchange) -> None:
        """Bookkeeping when the active exchange is over, however it ended."""
        if self._active is ex:
            self._active = None
            self._plane.inflight_requests -= 1
        waiter = ex.waiter
        if waiter is not None:
            ex.waiter = None
            waiter.cancel()  # still queued: the queue skips it
        self.up_deadline = _INF
        self.up_kind = U_NONE
        if self._pause_bits & P_UPSTREAM:
            self._resume(P_UPSTREAM)

    def _abandon(self, ex: Exchange, outcome: int) -> None:
        """Drop the upstream side of `ex` (connection closed, never reused) and end it."""
        ex.abandoned = True
        up = ex.up
        if up is not None:
            ex.up = None
            up.abort()
        task = ex.connect_task
        if task is not None:
            ex.connect_task = None
            task.cancel()
        self._end_lease(ex, outcome)
        self._finish(ex)

    def _next(self) -> None:
        """Serve the next pipelined request, or wait idle for one."""
        if self._pending_error is not None:
            self._send_error(self._pending_error)
            return
        if self._no_more:
            self._close()
            return
        queue = self._queue
        if queue:
            ex = queue.popleft()
            self._start(ex)
            if self._pause_bits & P_PIPELINE and len(queue) < PIPELINE_LIMIT // 2:
                held = self._held
                self._held = b""
                self._resume(P_PIPELINE)
                if held and not self._closing:
                    self._feed_sliced(held)
            return
        if self.in_head or self._parsing is not None:
            return  # the next request is arriving; its own clocks run
        if self._plane.draining:
            self._close()
            return
        self.deadline = self._time() + self._t_client_idle
        self.deadline_kind = K_IDLE

    def _local_reply(self, ex: Exchange, err: ProxyError) -> None:
        """Answer `ex` ourselves (404, 413, 503) before any upstream byte was sent."""
        ex.abandoned = True
        self._finish(ex)
        if err is errors.NO_ROUTE and not self.may_keep_alive(ex):
            err = errors.NO_ROUTE_CLOSE
        if err.close:
            self._send_error(err, ex.head_request)
            return
        assert self.transport is not None
        # RFC 9110 §9.3.2: no content in a response to HEAD, or the client, which reads
        # none, takes the body for the start of its next response.
        self.transport.write(err.head_wire if ex.head_request else err.wire)
        self._next()

    def _fail(self, ex: Exchange, err: ProxyError) -> None:
        """Answer an exchange whose upstream side failed before a response head."""
        self._finish(ex)
        ex.abandoned = True
        self._send_error(err, ex.head_request)

    def _send_error(self, err: ProxyError, head_only: bool = False) -> None:
        """Write a (Connection: close) error response, half-close, and linger."""
        if self._closing:
            return
        assert self.transport is not None
        self.transport.write(err.head_wire if head_only else err.wire)
        self._linger()

    def _linger(self) -> None:
        """Close a connection whose client may still be sending: FIN after what was
        written, then keep reading (and discarding) for a while, so the client gets the
        response, not a reset."""
        transport = self.transport
        assert transport is not None
        if not transport.can_write_eof():
            self._close()
            return
        self._closing = True
        self.up_deadline = _INF
        transport.write_eof()
        transport.resume_reading()
        self.deadline = self._time() + LINGER_S
        self.deadline_kind = K_LINGER

    def _parse_failed(self, err: ProxyError) -> None:
        """The request stream is broken at this point: nothing after it is parsed."""
        self._no_more = True
        self._pause(P_STOP)
        ex = self._active
        if ex is None:
            self._send_error(err)
            return
        if ex is self._parsing or not ex.body_done:
            # The broken bytes were the active request's own body: its upstream exchange
            # must not complete (it would look like a whole request).
            started = ex.up is not None and ex.up.started
            self._abandon(ex, OUTCOME_CLIENT_ABORT)
            if started:
                self._close()
            else:
                self._send_error(err)
            return
        self._pending_error = err  # answered after the in-flight response, in order

    def _body_too_large(self, ex: Exchange) -> None:
        """The running total of a chunked body passed the route's limit: 413 or abort."""
        started = ex.up is not None and ex.up.started
        self._no_more = True
        self._abandon(ex, OUTCOME_CLIENT_ABORT)
        if started:
            self._close()
        else:
            self._send_error(errors.BODY_TOO_LARGE)

    def _close(self) -> None:
        """Close after what is buffered has been written."""
        if not self._closing:
            self._closing = True
            self.deadline = _INF
            self.up_deadline = _INF
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        """Drop the connection now (drain deadline passed)."""
        ex = self._active
        if ex is not None:
            self._abandon(ex, OUTCOME_CLIENT_ABORT)
        self._closing = True
        if self.transport is not None:
            self.transport.abort()

    def _pause(self, bit: int) -> None:
        if not self._pause_bits and self.transport is not None:
            self.transport.pause_reading()
        self._pause_bits |= bit

    def _resume(self, bit: int) -> None:
        if self._pause_bits & bit:
            self._pause_bits &= ~bit
            if not self._pause_bits and self.transport is not None and not self._closing:
                self.transport.resume_reading()

    # -- timers (driven by the plane's ticker) -----------------------------------------

    def drain(self) -> None:
        """Close now if idle; otherwise the next response carries Connection: close."""
        if self._active is None and not self.in_head and self._parsing is None:
            self._close()

    def client_timeout(self) -> None:
        """The client-side deadline passed."""
        kind = self.deadline_kind
        self.deadline = _INF
        self.deadline_kind = K_NONE
        if kind == K_LINGER:
            if self.transport is not None:
                self.transport.close()
        elif kind in (K_IDLE, K_STALL):
            if kind == K_STALL and self._active is not None:
                self._abandon(self._active, OUTCOME_CLIENT_ABORT)
            self._close()
        elif kind == K_HEAD:
            if self._active is not None:
                self._no_more = True
                self._pause(P_STOP)
                self._pending_error = errors.REQUEST_TIMEOUT
            else:
                self._send_error(errors.REQUEST_TIMEOUT)
        elif kind == K_BODY:
            ex = self._active
            started = ex is not None and ex.up is not None and ex.up.started
            if ex is not None:
                self._abandon(ex, OUTCOME_CLIENT_ABORT)
            if started:
                self._close()
            else:
                self._send_error(errors.REQUEST_TIMEOUT)

    def upstream_timeout(self, now: float) -> None:
        """The upstream-side deadline passed (connect, response head or idle mid-body)."""
        if self.up_kind == U_IDLE:
            idle_until = self.up_last + self._t_upstream_idle
            if idle_until > now:
                self.up_deadline = idle_until  # bytes arrived since: not idle yet
                return
        kind = self.up_kind
        self.up_deadline = _INF
        self.up_kind = U_NONE
        ex = self._active
        if ex is None:
            return
        task = ex.connect_task
        if kind == U_CONNECT and task is not None and ex.pending is not None:
            # A connect timeout sent nothing: retried like a refusal. Only if the connect
            # is really cancelled (not done with its callback pending, which would attach).
            ex.connect_task = None
            if task.cancel() and self._retry(ex, OUTCOME_TIMEOUT):
                return
        started = ex.up is not None and ex.up.started
        self._abandon(ex, OUTCOME_TIMEOUT)
        if started:
            # Mid-body: abort both sides; the client must not see a complete response.
            self._closing = True
            if self.transport is not None:
                self.transport.abort()
        else:
            self._send_error(errors.BACKEND_TIMEOUT, ex.head_request)
