"""What travels on the wire in the tests: the body pattern, HTTP/1.x messages and the suite's
own parser for them, raw-socket exchanges, and a raw asyncio client.

Nothing here imports lbproxy. The parser is deliberately not llhttp (which the proxy uses):
the proxy's output is checked by code that shares none of its parsing, and strictly (CRLF
line ends, one framing per message, token header names), so output that only a lenient
client would accept fails the test that produced it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import select
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

# -- the body pattern -----------------------------------------------------------------------

PATTERN_BLOCK = 65536
_PATTERN_BASE = hashlib.shake_256(b"lbproxy test pattern").digest(PATTERN_BLOCK)


def _pattern_block(index: int) -> bytes:
    # Each block starts with its own index, so a lost, repeated or reordered block changes
    # the bytes (and the hash), not only a lost or added byte.
    return index.to_bytes(8, "big") + _PATTERN_BASE[8:]


def pattern_pieces(size: int, piece: int = PATTERN_BLOCK) -> Iterator[bytes]:
    """`size` bytes of the test pattern in pieces of at most `piece` bytes (never held whole)."""
    offset, index, block = 0, -1, b""
    while offset < size:
        at, start = divmod(offset, PATTERN_BLOCK)
        if at != index:
            index, block = at, _pattern_block(at)
        n = min(size - offset, piece, PATTERN_BLOCK - start)
        yield block[start : start + n]
        offset += n


def pattern(size: int) -> bytes:
    """`size` bytes of the test pattern, whole (for bodies a test compares directly)."""
    return b"".join(pattern_pieces(size))


@functools.lru_cache(maxsize=16)
def pattern_sha(size: int) -> str:
    """SHA-256 hex digest of `size` pattern bytes (hashed piecewise, cached per size)."""
    h = hashlib.sha256()
    for piece in pattern_pieces(size):
        h.update(piece)
    return h.hexdigest()


# -- messages -------------------------------------------------------------------------------

BODY_KEPT = 1 << 20  # bodies are hashed whole but kept only up to this many bytes


@dataclass(kw_only=True, eq=False)
class Message:
    """An HTTP/1.x message as received: headers in wire order and case, the body hashed."""

    headers: list[tuple[bytes, bytes]]
    version: bytes = b"1.1"
    chunked: bool = False  # it arrived with Transfer-Encoding: chunked
    complete: bool = False  # its end was seen (not cut short by a close)
    body_len: int = 0
    _kept: bytearray = field(default_factory=bytearray, repr=False)
    _sha: hashlib._Hash = field(default_factory=hashlib.sha256, repr=False)

    @property
    def body(self) -> bytes:
        """The body (its first BODY_KEPT bytes)."""
        return bytes(self._kept)

    @property
    def body_sha(self) -> str:
        """SHA-256 hex digest of the whole body received so far."""
        return self._sha.hexdigest()

    def take(self, data: bytes | bytearray) -> None:
        """Append body bytes."""
        self._sha.update(data)
        self.body_len += len(data)
        if len(self._kept) < BODY_KEPT:
            self._kept += data[: BODY_KEPT - len(self._kept)]

    def headers_named(self, name: bytes) -> list[bytes]:
        """Every value of header `name` (case-insensitive), in order."""
        name = name.lower()
        return [v for n, v in self.headers if n.lower() == name]

    def header(self, name: bytes) -> bytes | None:
        """Header `name`'s value (repeated fields joined with ", "), None when absent."""
        values = self.headers_named(name)
        return b", ".join(values) if values else None

    def tokens(self, name: bytes) -> set[bytes]:
        """The lowercased comma-separated tokens of header `name`."""
        return {t.strip().lower() for t in (self.header(name) or b"").split(b",") if t.strip()}


@dataclass(kw_only=True, eq=False)
class Request(Message):
    """A request as a backend received it."""

    method: bytes
    target: bytes
    conn: int = 0  # index of the backend connection it arrived on


@dataclass(kw_only=True, eq=False)
class Response(Message):
    """A response as a client received it (status 0: the connection ended before a head)."""

    status: int


class Malformed(ValueError):
    """Bytes that are not a well-formed HTTP/1.x message."""


_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(rb"(%s) (\S+) HTTP/(\d\.\d)" % _TOKEN)
_STATUS_LINE = re.compile(rb"HTTP/(\d\.\d) (\d{3})(?: [^\r\n]*)?")
_FIELD = re.compile(rb"(%s):[ \t]*(.*?)[ \t]*" % _TOKEN)
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;.*)?")
_LENGTH, _CHUNKED, _TO_CLOSE = "length", "chunked", "to-close"


class Parser:
    """An incremental parser for the requests (`responses=False`) or responses on one
    connection: `feed` bytes, then `head` gives the next message once its head is in and
    `body` moves its body along; nothing is parsed ahead of the message asked for, so a
    caller can say that a response is bodiless (it answers a HEAD) when it asks."""

    def __init__(self, *, responses: bool) -> None:
        self.responses = responses
        self.buf = bytearray()
        self.eof = False
        self.current: Message | None = None
        self._mode = _LENGTH
        self._left = 0  # body bytes left (length), or in the current chunk
        self._chunk_state = "size"  # size | data | crlf | trailers

    def feed(self, data: bytes) -> None:
        """Add received bytes."""
        self.buf += data

    def feed_eof(self) -> None:
        """The peer closed: a close-delimited body ends here."""
        self.eof = True

    def pending(self) -> bool:
        """Whether part of a message has arrived but not all of it."""
        return bool(self.buf) or (self.current is not None and not self.current.complete)

    def rest(self) -> bytes:
        """Received bytes not parsed yet."""
        return bytes(self.buf)

    def head(self, *, bodiless: bool = False) -> Message | None:
        """The next message once its whole head is in (None before); `bodiless` says the
        response answers a HEAD. Its body still needs `body`, unless it has none."""
        assert self.current is None or self.current.complete, "the previous body is unread"
        self.current = None
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        raw_head = bytes(self.buf[: end + 4])
        del self.buf[: end + 4]
        lines = raw_head[:-4].split(b"\r\n")
        if any(b"\r" in line or b"\n" in line for line in lines):
            raise Malformed(f"bare CR or LF in {raw_head[:200]!r}")
        headers = [self._field(line) for line in lines[1:]]
        msg: Message
        if self.responses:
            m = _STATUS_LINE.fullmatch(lines[0])
            if m is None:
                raise Malformed(f"not a status line: {lines[0][:200]!r}")
            status = int(m.group(2))
            msg = Response(status=status, version=m.group(1), headers=headers)
            bodiless = bodiless or status < 200 or status in (204, 304)
        else:
            m = _REQUEST_LINE.fullmatch(lines[0])
            if m is None:
                raise Malformed(f"not a request line: {lines[0][:200]!r}")
            msg = Request(method=m.group(1), target=m.group(2), version=m.group(3),
                          headers=headers)
        self.current = msg
        self._frame(msg, bodiless)
        self.body(msg)
        return msg

    @staticmethod
    def _field(line: bytes) -> tuple[bytes, bytes]:
        m = _FIELD.fullmatch(line)
        if m is None or b"\x00" in line:
            raise Malformed(f"not a header field: {line[:200]!r}")
        return m.group(1), m.group(2)

    def _frame(self, msg: Message, bodiless: bool) -> None:
        codings = [t.strip().lower() for v in msg.headers_named(b"transfer-encoding")
                   for t in v.split(b",")]
        lengths = msg.headers_named(b"content-length")
        if codings and lengths:
            raise Malformed("both Transfer-Encoding and Content-Length")
        if len(lengths) > 1 or (lengths and not lengths[0].isdigit()):
            raise Malformed(f"Content-Length {lengths!r}")
        msg.chunked = bool(codings) and codings[-1] == b"chunked"
        if bodiless:
            self._mode, self._left = _LENGTH, 0
        elif msg.chunked:
            self._mode, self._left, self._chunk_state = _CHUNKED, 0, "size"
        elif codings:  # another final coding: only a response can be read, to the close
            if not self.responses:
                raise Malformed("a request's last transfer coding must be chunked")
            self._mode = _TO_CLOSE
        elif lengths:
            self._mode, self._left = _LENGTH, int(lengths[0])
        else:
            self._mode, self._left = (_TO_CLOSE, 0) if self.responses else (_LENGTH, 0)

    def body(self, msg: Message) -> bool:
        """Move the body of `msg` (the current message) along; True once it is complete."""
        if msg.complete:
            return True
        assert msg is self.current
        buf, pos = self.buf, 0
        while not msg.complete:
            if self._mode == _TO_CLOSE:
                msg.take(buf[pos:])
                pos = len(buf)
                msg.complete = self.eof
                break
            if self._left:  # body bytes (a length, or the rest of a chunk)
                n = min(self._left, len(buf) - pos)
                if not n:
                    break
                msg.take(buf[pos : pos + n])
                pos += n
                self._left -= n
                continue
            if self._mode == _LENGTH:
                msg.complete = True
                break
            if self._chunk_state == "data":  # a chunk ended: its CRLF
                if len(buf) - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise Malformed("chunk data longer than its size")
                pos += 2
                self._chunk_state = "size"
                continue
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                break
            line = bytes(buf[pos:nl])
            pos = nl + 2
            if self._chunk_state == "trailers":
                msg.complete = line == b""
                continue
            m = _CHUNK_SIZE.fullmatch(line)
            if m is None:
                raise Malformed(f"chunk size line {line[:100]!r}")
            self._left = int(m.group(1), 16)
            self._chunk_state = "data" if self._left else "trailers"
        del buf[:pos]
        return msg.complete


def parse_response(data: bytes, *, bodiless: bool = False) -> tuple[Response | None, bytes]:
    """The first response in `data`, which ends where the connection did: (that response,
    or None when it is not all there; the bytes after it)."""
    parser = Parser(responses=True)
    parser.feed(data)
    parser.feed_eof()
    msg = parser.head(bodiless=bodiless)
    if msg is None or not parser.body(msg):
        return None, data
    assert isinstance(msg, Response)
    return msg, parser.rest()


# -- raw exchanges --------------------------------------------------------------------------


@dataclass
class Reply:
    """What came back on one raw connection."""

    raw: bytes
    closed: bool  # the proxy closed the connection (EOF or reset) within the wait

    def responses(self) -> list[Response]:
        """Every complete response in `raw`, in order."""
        parser = Parser(responses=True)
        parser.feed(self.raw)
        parser.feed_eof()
        out: list[Response] = []
        while (msg := parser.head()) is not None and parser.body(msg):
            assert isinstance(msg, Response)
            out.append(msg)
        return out

    @property
    def first(self) -> Response:
        """The first (usually only) response."""
        resps = self.responses()
        assert resps, f"no complete response in {self.raw[:300]!r}"
        return resps[0]


def exchange(port: int, data: bytes | Iterable[bytes], *, wait: float = 3.0,
             pause: float = 0.0, shut: bool = False, stop_when_answered: bool = False
             ) -> Reply:
    """Send `data` (pieces `pause` seconds apart) on a new connection to 127.0.0.1:`port`
    and read until the proxy closes or `wait` seconds pass with no close; `shut`
    half-closes our side after sending; `stop_when_answered` stops sending pieces once a
    response byte is waiting."""
    pieces = [data] if isinstance(data, bytes) else list(data)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        got = bytearray()
        closed = False
        for i, piece in enumerate(pieces):
            if i and pause:
                time.sleep(pause)
                if stop_when_answered and select.select([s], [], [], 0)[0]:
                    break  # the proxy already answered: stop sending, read
            try:
                s.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        if shut and not closed:
            s.shutdown(socket.SHUT_WR)
        end = time.monotonic() + wait
        while not closed:
            left = end - time.monotonic()
            if left <= 0 or not select.select([s], [], [], left)[0]:
                break
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            closed = not chunk
            got += chunk
        return Reply(bytes(got), closed)


async def exchange_async(port: int, data: bytes, *, wait: float = 5.0) -> Reply:
    """`exchange` for a test whose proxy runs in its own loop (the socket work is done in a
    thread); the proxy must close the connection within `wait` seconds."""
    reply = await asyncio.to_thread(exchange, port, data, wait=wait)
    if not reply.closed:
        raise TimeoutError(f"the proxy kept the connection open: {reply.raw[:300]!r}")
    return reply


# -- a raw asyncio client -------------------------------------------------------------------


class Client:
    """A raw client connection to the proxy, reading responses with `Parser`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = b""  # read by `closed` and not parsed yet
        self.interim: list[int] = []  # statuses of the 1xx responses seen so far
        self._parser = Parser(responses=True)

    @classmethod
    async def connect(cls, port: int) -> Client:
        """Open a connection to 127.0.0.1:`port`."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        """Write raw bytes."""
        self.writer.write(data)
        await self.writer.drain()

    async def send_stream(self, pieces: Iterable[bytes], chunked: bool = False) -> None:
        """Write body pieces with backpressure (chunk-framed if asked)."""
        for piece in pieces:
            self.writer.write(b"%x\r\n" % len(piece) + piece + b"\r\n" if chunked else piece)
            await self.writer.drain()
        if chunked:
            self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()

    async def _more(self) -> bool:
        """Feed the parser more bytes; False at EOF."""
        data = self.buffer or await self.reader.read(1 << 20)
        self.buffer = b""
        if not data:
            self._parser.feed_eof()
            return False
        self._parser.feed(data)
        return True

    async def response(self, head_request: bool = False, timeout: float = 10) -> Response:
        """Read one final response (1xx go to `interim`); a response cut short by EOF comes
        back with complete=False (status 0 when not even its head arrived)."""

        async def read() -> Response:
            while True:
                while (msg := self._parser.head(bodiless=head_request)) is None:
                    if not await self._more():
                        return Response(status=0, headers=[])
                while not self._parser.body(msg):
                    if not await self._more():
                        self._parser.body(msg)  # a close-delimited body ends at EOF
                        break
                assert isinstance(msg, Response)
                if msg.status >= 200:
                    return msg
                self.interim.append(msg.status)

        return await asyncio.wait_for(read(), timeout)

    async def read_all(self, timeout: float = 5) -> Reply:
        """Everything until the proxy closes the connection (TimeoutError if it does not
        within `timeout`)."""
        out = bytearray(self.buffer)
        self.buffer = b""

        async def go() -> None:
            while data := await self.reader.read(1 << 20):
                out.extend(data)

        await asyncio.wait_for(go(), timeout)
        return Reply(bytes(out), closed=True)

    async def closed(self, timeout: float = 5) -> bool:
        """True when the proxy closed the connection (EOF) within `timeout`."""
        try:
            data = await asyncio.wait_for(self.reader.read(1 << 20), timeout)
        except (TimeoutError, ConnectionError):
            return False
        self.buffer += data
        return data == b""

    def close(self) -> None:
        """Close our side."""
        self.writer.close()


async def http_get(host: str, port: int, path: str = "/", headers: str = "",
                   ssl_context: object = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """One HTTP/1.1 GET on a new connection (TLS with `ssl_context`): (status, body)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=ssl_context,
                                server_hostname=host if ssl_context else None), timeout)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}"
                     "Connection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    resp, _ = parse_response(data)
    assert resp is not None, data[:300]
    return resp.status, resp.body
