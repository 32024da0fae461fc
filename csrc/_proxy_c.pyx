# cython: language_level=3, annotation_typing=False, nonecheck=True
"""Compiled twin of ``lbproxy.proxy.client`` and ``lbproxy.proxy.pool``: the two protocols.

Same classes, same behaviour, same names (the test suite runs on both; the facade
``lbproxy.proxy.protocols`` picks one). The comments and RFC citations live in the twins
and are kept here where the code differs. What is native: every class is a final ``cdef``
class with typed C fields (no instance dict, no descriptor lookups on the hot path), the
calls between the client and upstream protocols and the pool are direct C calls, and the
state constants are C enums. httptools (llhttp) stays the parser: its callbacks remain
Python-visible ``def`` methods, looked up once by httptools when the parser is created.
Annotations are ignored (``annotation_typing=False``): C types are declared explicitly.
"""

cimport cython

import asyncio
import logging
import math
import time
from collections import deque

import httptools

from lbproxy.balance.cluster import Outcome, Refusal
from lbproxy.proxy import errors
from lbproxy.proxy.http import interim_head

include "_head_collector.pxi"

log = logging.getLogger("lbproxy.proxy")

# The twins' constants (lbproxy.proxy._http_py, client.py, pool.py) as C enums: compared
# on every request, so they must not be module-global Python lookups.
cdef enum:
    OK = 0
    E_BAD_REQUEST = 1
    E_TRANSFER_CODING = 2
    E_EXPECTATION = 3
    FRAME_NONE = 0
    FRAME_LENGTH = 1
    FRAME_CHUNKED = 2
    FRAME_CLOSE = 3
    F_CLOSE = 1
    F_EXPECT_CONTINUE = 2
    F_UPGRADE = 4
    BUFFER_LIMIT = 256 * 1024
    PIPELINE_LIMIT = 16
    PIPELINE_SLICE = 4096
    P_UPSTREAM = 1
    P_BUFFER = 2
    P_PIPELINE = 4
    P_STOP = 8
    K_NONE = 0
    K_IDLE = 1
    K_HEAD = 2
    K_BODY = 3
    K_STALL = 4
    K_LINGER = 5
    U_NONE = 0
    U_CONNECT = 1
    U_HEADERS = 2
    U_IDLE = 3
    _MAX_RESPONSE_HEAD = 65536
    _MAX_RESPONSE_HEADERS = 200

cdef bytes CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
cdef bytes CHUNK_END = b"0\r\n\r\n"
cdef bytes CRLF = b"\r\n"
cdef frozenset _IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
cdef double LINGER_S = 2.0
cdef double _INF = math.inf
# Bound once (uvloop's stdlib.pxi habit): module globals cost a dict lookup per use.
cdef object _now_ns = time.monotonic_ns
cdef object RequestParser = httptools.HttpRequestParser
cdef object ResponseParser = httptools.HttpResponseParser
cdef object ParserUpgrade = httptools.HttpParserUpgrade
cdef object ParserError = httptools.HttpParserError
cdef object OUTCOME_OK = Outcome.OK
cdef object OUTCOME_5XX = Outcome.HTTP_5XX

from lbproxy.proxy.http import analyse_request, analyse_response  # noqa: E402
cdef object OUTCOME_CONNECT_FAILED = Outcome.CONNECT_FAILED
cdef object OUTCOME_RESET = Outcome.RESET
cdef object OUTCOME_TIMEOUT = Outcome.TIMEOUT

cdef class ClientConnection
cdef class UpstreamConnection
cdef class UpstreamPool


log = logging.getLogger("lbproxy.proxy")

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
class _Reject(Exception):
    """Raised inside a parser callback to stop parsing; the error is on the connection."""


@cython.final
cdef class Exchange:
    """One request/response exchange (per request; slots only, no dicts)."""


    # Typed C fields: the client and upstream protocols read and write these on every
    # request, so each access is a struct field, not a dict or descriptor lookup.
    cdef public bint abandoned, body_done, head_request, keep_alive, retried, waiting_pool
    cdef public bint resent  # sent again after a backend dropped it (at most once)
    cdef public tuple tried  # slots of the attempts that failed (retries)
    cdef public bytes replay  # the whole body, when it went in the first write (or None)
    cdef public Py_ssize_t body_received, content_length, pending_bytes, max_body
    cdef public int flags, framing, minor, status
    cdef public ClientConnection conn
    cdef public UpstreamConnection up
    cdef public UpstreamPool pool
    cdef public object connect_task, lease, snapshot
    cdef public bytes host, method, path, query, upstream_head
    cdef public list headers, pending
    # its snapshot's timeouts (s), copied from the connection's per-snapshot cache
    cdef double t_connect, t_client_body_idle, t_upstream_headers, t_upstream_idle

    @staticmethod
    cdef Exchange new(ClientConnection conn, object snapshot, bytes method, int minor,
                      list headers, tuple analysed):
        cdef Exchange self = Exchange.__new__(Exchange)
        # `snapshot` is conn._snap, whose timeouts conn cached when it read it
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
        self.pending: list[bytes] | None = []
        self.pending_bytes = 0
        self.max_body = 0
        self.lease: Lease | None = None
        self.pool: UpstreamPool | None = None
        self.up: UpstreamConnection | None = None
        self.connect_task: asyncio.Future[Any] | None = None
        self.waiting_pool = False
        self.abandoned = False
        self.retried = False  # sent again after a failure (so no second 100 Continue)
        self.resent = False
        self.tried = ()
        self.replay = None
        self.status = 0
        return self


@cython.final
cdef class ClientConnection(HeadCollector):
    """One client connection: parse, validate, route, relay; keep-alive and pipelining."""


    cdef public object transport, _plane, _loop, _time, _parser, _snap, _reject, _pending_error, _queue
    # the DataPlane's pools dict, read directly (no Python frame for plane.pool())
    cdef dict _pools
    # limits of the snapshot the last request head was parsed under: recomputed only
    # when the controller swapped the snapshot, not per request
    cdef object _lim_snap
    # `_snap`'s limits and timeouts as C values, refreshed whenever `_snap` is assigned
    # (only in __init__ and on_message_begin), so a request reads no msgspec attributes
    cdef Py_ssize_t _max_request_line
    cdef double _t_request_headers, _t_client_body_idle, _t_client_idle
    cdef double _t_connect, _t_upstream_headers, _t_upstream_idle
    cdef public bytes _client_ip, _proto, _url, _held
    cdef public Py_ssize_t _head_raw, _begun, _head_limit, _raw_left
    cdef public Exchange _parsing, _active
    cdef public bint _no_more, _close_asked, _closing, writing_paused
    cdef public int _pause_bits, deadline_kind, _saved_kind, up_kind
    cdef public double deadline, _saved_deadline, up_deadline, up_last

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane
        self._loop = plane.loop
        self._time = self._loop.time
        self._pools = plane._pools
        self._lim_snap = None
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
        # last, so nothing above resets what it caches (_head_limit among them)
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
        cdef Exchange ex
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

    cdef bytes _relay_raw(self, bytes data):
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

    cdef bint _feed_sliced(self, bytes data) except -1:
        """Parse pipelined bytes a slice at a time, holding the rest once the queue is full."""
        cdef Exchange ex
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

    cdef bint _feed(self, bytes data) except -1:
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
        cdef Exchange ex
        if self._closing:
            return False  # nothing more to send: let the transport close
        self._no_more = True
        ex = self._active
        if ex is not None and ex.body_done and self._parsing is None and not self.in_head:
            return True  # keep our side open to send the response (RFC 9112 §9.6)
        if ex is not None:
            # EOF mid-request: the upstream exchange must not look complete.
            self._abandon(ex, Outcome.CLIENT_ABORT)
        self._close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """The client went away: abandon the exchange in progress (never reused upstream)."""
        cdef Exchange ex, queued
        self._closing = True
        self._plane.unregister(self)
        ex = self._active
        if ex is not None:
            self._abandon(ex, Outcome.CLIENT_ABORT)
        for queued in self._queue:
            queued.abandoned = True
        self._queue.clear()

    def pause_writing(self) -> None:
        """Our buffer towards the client is full: stop reading the backend."""
        cdef Exchange ex
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
        cdef Exchange ex
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

    cdef void _cache_snapshot(self, snap) except *:
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
        cdef Exchange ex
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
        cdef Exchange ex
        cdef UpstreamConnection up
        cdef Py_ssize_t n, received
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
        cdef Exchange ex
        cdef UpstreamConnection up
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
            if not up.started:
                self.up_deadline = self._time() + ex.t_upstream_headers
                self.up_kind = U_HEADERS
        elif ex.pending is not None and ex.framing == FRAME_CHUNKED:
            ex.pending.append(CHUNK_END)

    # -- the exchange ------------------------------------------------------------------

    cdef void _start(self, Exchange ex) except *:
        """Route the request and take a lease: the one call into the cluster gate."""
        cdef UpstreamPool pool
        cdef double now
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
        gate = route.cluster.begin(route.hash_key(ex.path, ex.query, ex.headers), _now_ns())
        if type(gate) is Refusal:
            self._local_reply(ex, errors.refusal(gate.code, gate.retry_after))
            return
        ex.lease = gate
        backend = gate.backend
        host, port = backend.host, backend.port
        pool = self._pools.get((host, port))
        if pool is None:
            pool = plane.pool(host, port)
        ex.pool = pool
        now = self._time()
        self.up_deadline = now + ex.t_connect
        self.up_kind = U_CONNECT
        if not ex.body_done and self.deadline_kind != K_HEAD:
            self.deadline = now + ex.t_client_body_idle
            self.deadline_kind = K_BODY
        pool.acquire(ex)

    cdef bytes first_upstream_bytes(self, Exchange ex):
        """Head plus the body held so far, for a connection being attached to `ex`."""
        if ex.flags & F_EXPECT_CONTINUE and not ex.retried:
            # RFC 9110 §10.1.1: exactly one 100 Continue, sent when we start forwarding;
            # the backend never sees the Expect header, so it sends no 100 of its own.
            assert self.transport is not None
            self.transport.write(CONTINUE_100)
        cdef bytes body
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
        else:
            self.up_deadline = _INF
            self.up_kind = U_NONE
        return first

    cdef bint may_keep_alive(self, Exchange ex) except -1:
        """Whether the response to `ex` may leave this connection open (RFC 9112 §9.3)."""
        return (
            ex.keep_alive
            and ex.body_done
            and not self._plane.draining
            and not self._closing
            and not self._no_more
            and self._pending_error is None
        )

    cdef inline void response_started(self) except *:
        """The response head is on its way: the backend is now on the idle clock."""
        self.up_deadline = self.up_last + self._t_upstream_idle
        self.up_kind = U_IDLE

    cdef void response_done(self, Exchange ex) except *:
        """The response was fully relayed: account it, then serve the next request."""
        self._end_lease(ex, OUTCOME_5XX if ex.status >= 500 else OUTCOME_OK)
        self._finish(ex)
        if self._pending_error is not None:
            self._send_error(self._pending_error)  # a later pipelined request was bad
        elif not ex.body_done:
            self._linger()  # answered before the request body ended: the client may be sending
        elif not ex.keep_alive:
            self._close()  # Connection: close was sent
        else:
            self._next()

    cdef void upstream_failed(
        self, Exchange ex, UpstreamConnection conn, bint malformed
    ) except *:
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
            self._end_lease(ex, Outcome.RESET)
            self._fail(ex, errors.BACKEND_FAILED)
            return
        # Mid-body: the client keeps what arrived, then the connection closes; never a
        # clean chunked end or a complete-looking response.
        self._end_lease(ex, Outcome.RESET)
        self._finish(ex)
        self._close()

    cdef void connect_failed(self, Exchange ex, exc) except *:
        """The TCP connect to the backend failed (refused, unreachable): 502."""
        if ex is not self._active:
            return
        # Nothing was sent, so any method may go to another backend, provided every body
        # byte received so far is still held (`pending`; None once bytes went upstream).
        if ex.pending is not None and self._retry(ex, OUTCOME_CONNECT_FAILED):
            return
        self._end_lease(ex, Outcome.CONNECT_FAILED)
        self._fail(ex, errors.BACKEND_CONNECT_FAILED)

    cdef bint _retry(self, Exchange ex, outcome) except -1:
        """End the failed attempt's lease; begin `ex` again on another backend if allowed."""
        cdef UpstreamPool pool
        cdef tuple tried
        lease = ex.lease
        self._end_lease(ex, outcome)  # first: outlier detection sees the failure
        if lease is None or self._closing:
            return False
        route = ex.snapshot.router.match(ex.method, ex.path, ex.host, ex.headers)  # as in _start
        if route is None:
            return False
        cluster = route.cluster
        tried = ex.tried = ex.tried + (lease.slot,)
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

    cdef void pause_for_upstream(self) except *:
        """The backend's write buffer is full: stop reading the client."""
        self._pause(P_UPSTREAM)

    cdef void resume_for_upstream(self) except *:
        """The backend drained its write buffer: read the client again."""
        self._resume(P_UPSTREAM)

    # -- endings -----------------------------------------------------------------------

    cdef void _end_lease(self, Exchange ex, outcome) except *:
        """End the lease exactly once (the only call to Lease.end in the data plane)."""
        lease = ex.lease
        if lease is not None:
            ex.lease = None
            lease.end(outcome, _now_ns(), ex.status)

    cdef void _finish(self, Exchange ex) except *:
        """Bookkeeping when the active exchange is over, however it ended."""
        if self._active is ex:
            self._active = None
            self._plane.inflight_requests -= 1
        self.up_deadline = _INF
        self.up_kind = U_NONE
        if self._pause_bits & P_UPSTREAM:
            self._resume(P_UPSTREAM)

    cdef void _abandon(self, Exchange ex, outcome) except *:
        """Drop the upstream side of `ex` (connection closed, never reused) and end it."""
        cdef UpstreamConnection up
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

    cdef void _next(self) except *:
        """Serve the next pipelined request, or wait idle for one."""
        cdef Exchange ex
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

    cdef void _local_reply(self, Exchange ex, err) except *:
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

    cdef void _fail(self, Exchange ex, err) except *:
        """Answer an exchange whose upstream side failed before a response head."""
        self._finish(ex)
        ex.abandoned = True
        self._send_error(err, ex.head_request)

    cdef void _send_error(self, err, bint head_only=False) except *:
        """Write a (Connection: close) error response, half-close, and linger."""
        if self._closing:
            return
        assert self.transport is not None
        self.transport.write(err.head_wire if head_only else err.wire)
        self._linger()

    cdef void _linger(self) except *:
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

    cdef void _parse_failed(self, err) except *:
        """The request stream is broken at this point: nothing after it is parsed."""
        cdef Exchange ex
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
            self._abandon(ex, Outcome.CLIENT_ABORT)
            if started:
                self._close()
            else:
                self._send_error(err)
            return
        self._pending_error = err  # answered after the in-flight response, in order

    cdef void _body_too_large(self, Exchange ex) except *:
        """The running total of a chunked body passed the route's limit: 413 or abort."""
        started = ex.up is not None and ex.up.started
        self._no_more = True
        self._abandon(ex, Outcome.CLIENT_ABORT)
        if started:
            self._close()
        else:
            self._send_error(errors.BODY_TOO_LARGE)

    cdef void _close(self) except *:
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
            self._abandon(ex, Outcome.CLIENT_ABORT)
        self._closing = True
        if self.transport is not None:
            self.transport.abort()

    cdef void _pause(self, int bit) except *:
        if not self._pause_bits and self.transport is not None:
            self.transport.pause_reading()
        self._pause_bits |= bit

    cdef void _resume(self, int bit) except *:
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
        cdef Exchange ex
        kind = self.deadline_kind
        self.deadline = _INF
        self.deadline_kind = K_NONE
        if kind == K_LINGER:
            if self.transport is not None:
                self.transport.close()
        elif kind in (K_IDLE, K_STALL):
            if kind == K_STALL and self._active is not None:
                self._abandon(self._active, Outcome.CLIENT_ABORT)
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
                self._abandon(ex, Outcome.CLIENT_ABORT)
            if started:
                self._close()
            else:
                self._send_error(errors.REQUEST_TIMEOUT)

    def upstream_timeout(self, now: float) -> None:
        """The upstream-side deadline passed (connect, response head or idle mid-body)."""
        cdef Exchange ex
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
        self._abandon(ex, Outcome.TIMEOUT)
        if started:
            # Mid-body: abort both sides; the client must not see a complete response.
            self._closing = True
            if self.transport is not None:
                self.transport.abort()
        else:
            self._send_error(errors.BACKEND_TIMEOUT, ex.head_request)


class _BadResponse(Exception):
    """Raised inside parser callbacks: the backend's response is malformed (→ 502)."""


@cython.final
cdef class UpstreamConnection(HeadCollector):
    """One connection to a backend; carries one exchange at a time, then returns to its pool."""


    cdef public bint _interim, _done, _reusable, _chunked_out
    cdef public bint started, got_bytes, request_sent, reused, closed
    cdef public Py_ssize_t _length_left, _raw_left
    cdef public list _out
    cdef public Exchange ex
    cdef public ClientConnection client
    cdef public UpstreamPool pool
    cdef public object transport, _time, _parser
    cdef public int framing_in
    cdef public double idle_since

    def __init__(self, UpstreamPool pool) -> None:
        self.max_header_bytes = _MAX_RESPONSE_HEAD
        self.max_headers = _MAX_RESPONSE_HEADERS
        self.pool = pool
        self._time = pool.loop.time
        self.transport: asyncio.Transport | None = None
        self._parser = ResponseParser(self)
        self._interim = False
        self._done = False
        self._reusable = False
        self._chunked_out = False
        self._length_left = 0  # Content-Length body bytes still to come
        self._raw_left = 0  # > 0: relaying those bytes without the parser
        # Bytes for the client produced while parsing one read: written with one writev,
        # so a small response (head + body in one segment) costs one send().
        self._out: list[bytes] = []
        self.ex: Exchange | None = None
        self.client: ClientConnection | None = None
        self.framing_in = 0
        self.started = False  # response head written to the client
        self.got_bytes = False  # any response byte arrived for the current exchange
        self.request_sent = False
        self.reused = False
        self.closed = False
        self.idle_since = 0.0

    # -- exchange lifecycle ------------------------------------------------------------

    cdef void attach(self, Exchange ex, bytes first) except *:
        """Start carrying `ex`: send its head (and any body already buffered)."""
        self.ex = ex
        self.client = ex.conn
        self.headers = []
        self.header_bytes = 0
        self.in_head = True
        self._interim = False
        self._done = False
        self._length_left = 0
        self._raw_left = 0
        self.started = False
        self.got_bytes = False
        self.request_sent = ex.body_done
        ex.up = self
        transport = self.transport
        assert transport is not None
        if ex.conn.writing_paused:
            # The client still has not drained the last response: do not read ahead of it.
            transport.pause_reading()
        transport.write(first)

    cpdef abort(self):
        """Drop the connection now (never reused): the exchange on it is abandoned."""
        self.ex = None
        self.client = None
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Remember the transport (the pool attaches an exchange right after)."""
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        """Feed the response parser; finish the exchange once the response is complete."""
        cdef ClientConnection client
        cdef Py_ssize_t left
        client = self.client
        if client is None:
            # Bytes on an idle connection (RFC 9112 §9.3.2: nothing is outstanding): the
            # stream is out of sync, so it can never be reused.
            self.abort()
            return
        self.got_bytes = True
        client.up_last = self._time()
        left = self._raw_left
        if left:
            self._relay_raw(client, data, left)
            return
        out = self._out
        try:
            self._parser.feed_data(data)
        except ParserError:
            if out:
                self._flush()
            if self._done and self.client is not None:
                # Junk after a complete response (RFC 9112 §9.3.2): the response stands,
                # the connection is out of step and is dropped.
                self._reusable = False
                self._complete()
            elif self.client is not None:  # not already handled inside a callback
                self._fail_malformed()
            return
        if out:
            self._flush()
        if self._done:
            self._complete()
        elif self._length_left > 0 and not self._raw_left:
            # The head is parsed and the rest is a Content-Length body: relay the backend's
            # reads as they are, without the parser's copy and callbacks per read (RFC 9112
            # §6.2: exactly this many bytes follow). The parser is replaced at the end.
            self._raw_left = self._length_left

    cdef void _relay_raw(self, ClientConnection client, bytes data, Py_ssize_t left) except *:
        """Relay body bytes of a Content-Length response directly."""
        n = len(data)
        transport = client.transport
        assert transport is not None
        if n < left:
            self._raw_left = left - n
            transport.write(data)
            return
        self._raw_left = self._length_left = 0
        if n > left:
            # Bytes after the end of the response: the backend is out of step (RFC 9112
            # §9.3.2); what belongs to the response is relayed, the connection is dropped.
            data = data[:left]
            self._reusable = False
        transport.write(data)
        self._parser = ResponseParser(self)
        self._complete()

    cdef void _flush(self) except *:
        """Write what parsing produced for the client in one call."""
        cdef ClientConnection client
        out = self._out
        client = self.client
        if client is not None and client.transport is not None:
            if len(out) == 1:
                client.transport.write(out[0])
            else:
                client.transport.writelines(out)
        out.clear()

    def eof_received(self) -> bool:
        """Half-close from the backend ends a close-delimited body; close our side too."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """The backend went away: end a close-delimited body, or fail the exchange."""
        cdef ClientConnection client
        cdef Exchange ex
        self.closed = True
        self.pool.lost(self)
        client = self.client
        if client is None:
            return
        if self.started and self.framing_in == FRAME_CLOSE and exc is None and not self._done:
            self._done = True
            self._reusable = False
            self._complete()
            return
        self.client = None
        ex = self.ex
        self.ex = None
        assert ex is not None
        client.upstream_failed(ex, self, False)

    def pause_writing(self) -> None:
        """The backend is slow to take the request body: stop reading the client."""
        if self.client is not None:
            self.client.pause_for_upstream()

    def resume_writing(self) -> None:
        """The backend caught up: read the client again."""
        if self.client is not None:
            self.client.resume_for_upstream()

    # -- httptools callbacks -----------------------------------------------------------

    def head_too_large(self) -> None:
        """The response head passed the limits: malformed."""
        raise _BadResponse("response head too large")

    def on_headers_complete(self) -> None:
        """Validate and rewrite the response head, then send it to the client."""
        cdef ClientConnection client
        cdef Exchange ex
        if self._done:
            # A second response in the same read: one request gets one response, or a
            # pipelining client would take it as the answer to its next request
            # (response splitting, RFC 9112 §9.3.2).
            raise _BadResponse("bytes after a complete response")
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                raise _BadResponse("101 without an upgrade request")  # we never ask for one
            # RFC 9110 §15.2: a proxy MUST forward 1xx responses (103 Early Hints, ...)
            # except those it caused: the backend never sees Expect, and the proxy sends
            # its own single 100 Continue. HTTP/1.0 clients get none (same section).
            ex = self.ex
            if status != 100 and ex is not None and ex.minor == 1:
                self._out.append(interim_head(status, self.headers))
            self._interim = True
            self.headers = []
            self.header_bytes = 0
            return
        self.in_head = False
        ex = self.ex
        client = self.client
        assert ex is not None and client is not None
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise _BadResponse("unsupported response version")
        keep_alive = client.may_keep_alive(ex)
        result, framing_in, framing_out, clen, reusable, keep_alive, head = analyse_response(
            status, 1 if version == "1.1" else 0, self.headers, ex.head_request, ex.minor,
            keep_alive,
        )
        if result != OK:
            raise _BadResponse("malformed response head")
        self.framing_in = framing_in
        self._length_left = clen if framing_in == FRAME_LENGTH else 0
        self._reusable = reusable
        self._chunked_out = framing_out == FRAME_CHUNKED
        ex.status = status
        ex.keep_alive = keep_alive
        self.started = True
        client.response_started()
        self._out.append(head)
        if ex.head_request:
            # llhttp is not told the request was HEAD, so it would wait for a body that
            # never comes (RFC 9110 §9.3.2): the response ends here; use a fresh parser next.
            self._done = True
            self._parser = ResponseParser(self)

    def on_body(self, data: bytes) -> None:
        """Relay one piece of the response body, re-framed for the client."""
        if self.client is None or self._done:
            return
        if self._length_left:
            self._length_left -= len(data)
        if self._chunked_out:
            self._out += (b"%x\r\n" % len(data), data, CRLF)
        else:
            self._out.append(data)

    def on_message_complete(self) -> None:
        """The response (or an interim 1xx) is complete."""
        if self._interim:
            self._interim = False
            return
        self._done = True

    # -- endings -----------------------------------------------------------------------

    cdef void _complete(self) except *:
        """The response is fully relayed: finish the exchange and maybe pool the socket."""
        cdef ClientConnection client
        cdef Exchange ex
        ex = self.ex
        client = self.client
        self.ex = None
        self.client = None
        assert ex is not None and client is not None
        if self._chunked_out:
            self._out.append(CHUNK_END)
        if self._out:
            self.client = client
            self._flush()
            self.client = None
        if self._reusable and self.request_sent and not self.closed:
            self.pool.release(self)
        else:
            self.abort()
        client.response_done(ex)

    cdef void _fail_malformed(self) except *:
        """The backend sent something that is not HTTP/1.1: drop it and fail the exchange."""
        cdef ClientConnection client
        cdef Exchange ex
        ex = self.ex
        client = self.client
        self.abort()
        if ex is not None and client is not None:
            client.upstream_failed(ex, self, True)

    cdef inline void request_complete(self) noexcept:
        """The client's request body is fully written upstream."""
        self.request_sent = True


@cython.final
cdef class UpstreamPool:
    """Keep-alive connections to one backend address (max connections, max idle, idle timeout)."""


    cdef public object _plane, loop, host, port, waiters
    cdef public list idle
    cdef public Py_ssize_t total

    def __init__(self, plane: DataPlane, host: str, port: int) -> None:
        self._plane = plane
        self.loop = plane.loop
        self.host = host
        self.port = port
        self.idle: list[UpstreamConnection] = []  # LIFO: the warmest connection first
        self.total = 0  # connecting + in use + idle
        self.waiters: deque[Exchange] = deque()

    cdef void acquire(self, Exchange ex) except *:
        """Attach `ex` to an idle connection now, or connect, or queue when at the limit."""
        cdef UpstreamConnection conn
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            conn.reused = True
            conn.attach(ex, ex.conn.first_upstream_bytes(ex))
            return
        if self.total < ex.snapshot.upstream.max_connections:
            self._connect(ex)
        else:
            ex.waiting_pool = True
            self.waiters.append(ex)

    def _connect(self, ex: Exchange) -> None:
        self.total += 1
        ex.connect_task = task = asyncio.ensure_future(
            self.loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port)
        )
        task.add_done_callback(lambda t: self._connected(ex, t))

    def _connected(self, Exchange ex, task) -> None:
        cdef UpstreamConnection conn
        if ex.connect_task is task:
            ex.connect_task = None
        if task.cancelled():
            self.total -= 1  # the client left or the connect timed out
            return
        exc = task.exception()
        if exc is not None:
            self.total -= 1
            if not ex.abandoned:
                ex.conn.connect_failed(ex, exc)
            return
        _transport, conn = task.result()
        if ex.abandoned:
            self.release(conn)  # a fresh, clean connection: keep it for the next request
            return
        conn.attach(ex, ex.conn.first_upstream_bytes(ex))

    cpdef release(self, UpstreamConnection conn):
        """Take back a connection whose last exchange ended cleanly."""
        cdef Exchange ex
        waiters = self.waiters
        while waiters:
            ex = waiters.popleft()
            if not ex.abandoned:
                ex.waiting_pool = False
                conn.reused = True
                conn.attach(ex, ex.conn.first_upstream_bytes(ex))
                return
        snapshot = self._plane.snapshot
        if len(self.idle) >= snapshot.upstream.max_idle or self._plane.draining:
            conn.abort()
            return
        assert conn.transport is not None
        conn.transport.resume_reading()  # it may have been paused for a slow client
        conn.idle_since = self.loop.time()
        self.idle.append(conn)

    cpdef lost(self, UpstreamConnection conn):
        """A connection closed (either side): forget it; a queued exchange may connect now."""
        cdef Exchange ex
        self.total -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        while self.waiters:
            ex = self.waiters.popleft()
            if not ex.abandoned:
                ex.waiting_pool = False
                self._connect(ex)
                break

    def sweep(self, now: float, idle_timeout: float) -> None:
        """Close idle connections older than `idle_timeout` (called by the plane's ticker)."""
        for conn in [c for c in self.idle if now - c.idle_since > idle_timeout]:
            conn.abort()

    def close_idle(self) -> None:
        """Close every idle connection (drain)."""
        for conn in list(self.idle):
            conn.abort()
        self.idle.clear()
