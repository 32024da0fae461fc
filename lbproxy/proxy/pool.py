# cython: cdivision=False, annotation_typing=False
"""Upstream side: one keep-alive connection Protocol per backend socket, pooled per address.

Owns connecting (connect timeout, refusal), the response parser glue (httptools in response
mode), relaying the response head and body to the client with backpressure, and deciding
whether a connection may be reused: only after an exchange that ended cleanly (RFC 9112
§9.3: response fully read, request fully sent, no ``Connection: close``). Must not touch
routing or the cluster gate: outcomes are reported to the client connection, which owns
the lease.

One source, two builds: this module runs as plain Python (``LBPROXY_NO_EXTENSIONS=1``) and
is what Cython compiles into ``lbproxy.proxy._pool_c``, with ``_pool_c.pxd`` beside it
declaring the C types (see lbproxy/proxy/client.py, its partner). Import the classes
through lbproxy/proxy/protocols.py, which picks the build.
"""

from __future__ import annotations

try:
    import cython
except ImportError:  # pragma: no cover - Python without Cython installed
    from lbproxy.native import pure_mode as cython

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

import httptools

from lbproxy.proxy.http import analyse_response, interim_head

if not cython.compiled:  # compiled, _pool_c.pxd cimports these as C declarations
    from lbproxy.codes import FRAME_CHUNKED, FRAME_CLOSE, FRAME_LENGTH, OK
    from lbproxy.proxy.http import HeadCollector

    if TYPE_CHECKING:
        from lbproxy.proxy.client import ClientConnection, Exchange

if TYPE_CHECKING:
    from lbproxy.proxy.plane import DataPlane

CHUNK_END = b"0\r\n\r\n"
CRLF = b"\r\n"
_MAX_RESPONSE_HEAD = 65536  # bytes of response header fields before we call it malformed
_MAX_RESPONSE_HEADERS = 200
# Bound once: a module global costs a dict lookup per use in Python.
ResponseParser = httptools.HttpResponseParser
ParserError = httptools.HttpParserError


class _BadResponse(Exception):
    """Raised inside parser callbacks: the backend's response is malformed (→ 502)."""


class UpstreamConnection(HeadCollector):
    """One connection to a backend; carries one exchange at a time, then returns to its pool."""

    __slots__ = (
        "_chunked_out",
        "_done",
        "_interim",
        "_length_left",
        "_out",
        "_parser",
        "_raw_left",
        "_reusable",
        "_time",
        "client",
        "closed",
        "ex",
        "framing_in",
        "got_bytes",
        "idle_since",
        "pool",
        "request_sent",
        "reused",
        "started",
        "transport",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        super().__init__()
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

    def attach(self, ex: Exchange, first: bytes) -> None:
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

    def abort(self) -> None:
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

    def _relay_raw(self, client: ClientConnection, data: bytes, left: int) -> None:
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

    def _flush(self) -> None:
        """Write what parsing produced for the client in one call."""
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
        client.upstream_failed(ex, self)

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

    def _complete(self) -> None:
        """The response is fully relayed: finish the exchange and maybe pool the socket."""
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

    def _fail_malformed(self) -> None:
        """The backend sent something that is not HTTP/1.1: drop it and fail the exchange."""
        ex = self.ex
        client = self.client
        self.abort()
        if ex is not None and client is not None:
            client.upstream_failed(ex, self, True)  # malformed

    def request_complete(self) -> None:
        """The client's request body is fully written upstream."""
        self.request_sent = True


class UpstreamPool:
    """Keep-alive connections to one backend address (max connections, max idle, idle timeout)."""

    __slots__ = ("_plane", "host", "idle", "loop", "port", "total", "waiters")

    def __init__(self, plane: DataPlane, host: str, port: int) -> None:
        self._plane = plane
        self.loop = plane.loop
        self.host = host
        self.port = port
        self.idle: list[UpstreamConnection] = []  # LIFO: the warmest connection first
        self.total = 0  # connecting + in use + idle
        self.waiters: deque[Exchange] = deque()

    def acquire(self, ex: Exchange) -> None:
        """Attach `ex` to an idle connection now, or connect, or queue when at the limit."""
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
            # An asyncio protocol by duck typing: compiled, it is a cdef class, which cannot
            # also derive from the Python class asyncio.Protocol.
            self.loop.create_connection(
                lambda: UpstreamConnection(self), self.host, self.port)  # type: ignore[type-var]
        )
        task.add_done_callback(lambda t: self._connected(ex, t))

    def _connected(self, ex: Exchange, task: asyncio.Future[Any]) -> None:
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

    def release(self, conn: UpstreamConnection) -> None:
        """Take back a connection whose last exchange ended cleanly."""
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

    def lost(self, conn: UpstreamConnection) -> None:
        """A connection closed (either side): forget it; a queued exchange may connect now."""
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
