"""Pure-Python twin of ``lbproxy.proxy._http_c``: request/response head validation and rewrite.

Owns the per-request header work the parser (llhttp via httptools) leaves to us: the strict
checks llhttp lets through (RFC 9112 §3, §6, §7; RFC 9110 §7.2, §7.6), hop-by-hop removal
and the headers the proxy adds, serialised into the head sent on. One pass over the header
list, no dicts. Must not touch sockets, routing or the cluster gate. Header names arrive
lowercased (the client protocol lowercases them); they are forwarded lowercased, as
HAProxy does (names are case-insensitive, RFC 9110 §5.1).
"""

from __future__ import annotations

import os
import random

from lbproxy.codes import (
    E_BAD_REQUEST,
    E_EXPECTATION,
    E_TRANSFER_CODING,
    F_CLOSE,
    F_EXPECT_CONTINUE,
    F_UPGRADE,
    FRAME_CHUNKED,
    FRAME_CLOSE,
    FRAME_LENGTH,
    FRAME_NONE,
    OK,
)

# Hop-by-hop names (RFC 9110 §7.6.1), plus the framing headers this proxy re-frames itself
# (RFC 9112 §6.1, §6.2); requests also lose the headers the proxy rewrites.
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"te", b"trailer", b"upgrade", b"proxy-connection"}
)
DROP_RESPONSE = HOP_BY_HOP | {b"transfer-encoding", b"content-length", b"via"}
DROP_REQUEST = DROP_RESPONSE | {
    b"expect", b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-request-id"
}

# X-Request-Id kept from the client only when it is 1-128 of [A-Za-z0-9._:-]: safe to log
# and to echo without quoting.
_REQUEST_ID_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")
# uri-host / port characters (RFC 3986 §3.2.2): reg-name, IPv6 literal brackets, ":" port.
_HOST_CHARS = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:[]%"
)
_DIGITS = frozenset(b"0123456789")
# reg-name / IPv4address (RFC 3986 §3.2.2): unreserved, pct-encoded, sub-delims; no ":".
_REG_NAME_CHARS = _HOST_CHARS - frozenset(b":[]")
# Inside an IP-literal's brackets: IPv6address or IPvFuture (hex digits, ".", ":", ...).
_IP_LITERAL_CHARS = _HOST_CHARS - frozenset(b"[]")


def valid_host(value: bytes) -> bool:
    """True when `value` is uri-host [":" port] (RFC 9110 §7.2, RFC 3986 §3.2.2-3.2.3).

    Checks the shape, not the address: one optional ":" and a digits-only port after a
    reg-name or IPv4 address, or a bracketed IP-literal (C twin: `_http_c.valid_host`).
    """
    if value[:1] == b"[":
        end = value.find(b"]")
        if end < 2 or not _IP_LITERAL_CHARS.issuperset(value[1:end]):
            return False
        rest = value[end + 1 :]
    else:
        host, colon, port = value.partition(b":")
        if not _REG_NAME_CHARS.issuperset(host):
            return False
        rest = colon + port
    return not rest or (rest[:1] == b":" and _DIGITS.issuperset(rest[1:]))

_rng = random.Random(os.urandom(16))

STATUS_LINES: dict[int, bytes] = {}
_PHRASES = {
    100: "Continue", 101: "Switching Protocols", 103: "Early Hints",
    200: "OK", 201: "Created", 202: "Accepted", 203: "Non-Authoritative Information",
    204: "No Content", 205: "Reset Content", 206: "Partial Content",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Found", 303: "See Other",
    304: "Not Modified", 307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 408: "Request Timeout",
    409: "Conflict", 410: "Gone", 411: "Length Required", 412: "Precondition Failed",
    413: "Content Too Large", 414: "URI Too Long", 415: "Unsupported Media Type",
    416: "Range Not Satisfiable", 417: "Expectation Failed", 421: "Misdirected Request",
    422: "Unprocessable Content", 425: "Too Early", 426: "Upgrade Required",
    428: "Precondition Required", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 451: "Unavailable For Legal Reasons",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}  # fmt: skip
for _code in range(100, 600):
    # The reason phrase is advisory (RFC 9112 §4); we send the standard one, not the backend's.
    STATUS_LINES[_code] = f"HTTP/1.1 {_code} {_PHRASES.get(_code, '')}\r\n".encode("ascii")


class HeadCollector:
    """Parser-callback base: collects header fields, lowercased, within the head limits."""

    __slots__ = ("header_bytes", "headers", "in_head", "max_header_bytes", "max_headers")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.max_header_bytes = 65536
        self.max_headers = 100
        self.in_head = False

    def on_header(self, name: bytes, value: bytes) -> None:
        """httptools callback: one field; ignored outside the head (trailers are dropped)."""
        if not self.in_head:
            return  # RFC 9112 §7.1.2: trailer fields are not forwarded
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.max_header_bytes or len(self.headers) >= self.max_headers:
            self.head_too_large()
            return
        # RFC 9110 §5.5: leading and trailing whitespace is not part of a field value;
        # llhttp drops the leading OWS only ("Content-Length: 5 " must mean 5).
        self.headers.append((name.lower(), value.rstrip(b" \t")))

    def head_too_large(self) -> None:
        """Called when a limit is passed; subclasses raise their own error."""
        raise ValueError("header limits exceeded")


def new_request_id() -> bytes:
    """A fresh random request id: 24 lowercase hex digits (96 bits)."""
    return b"%024x" % _rng.getrandbits(96)


def valid_request_id(value: bytes) -> bool:
    """True when a client's X-Request-Id may be kept (1-128 of [A-Za-z0-9._:-])."""
    return 0 < len(value) <= 128 and _REQUEST_ID_CHARS.issuperset(value)


def _valid_length(value: bytes) -> bool:
    """Content-Length is 1*DIGIT (RFC 9110 §8.6); over 18 digits is no real body."""
    return 0 < len(value) <= 18 and _DIGITS.issuperset(value)


def _tokens(value: bytes) -> list[bytes]:
    """The lowercased comma-separated tokens of a list header (RFC 9110 §5.6.1)."""
    return [t.strip(b" \t").lower() for t in value.split(b",") if t.strip(b" \t")]


def _append_fields(
    out: bytearray, headers: list[tuple[bytes, bytes]], drop: frozenset[bytes],
    conn_names: list[bytes],
) -> None:
    """Serialise every field not in `drop` nor named by Connection (RFC 9110 §7.6.1)."""
    for name, value in headers:
        if name in drop or (conn_names and name in conn_names):
            continue
        out += name
        out += b": "
        out += value
        out += b"\r\n"


def interim_head(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The head of a 1xx response as relayed to an HTTP/1.1 client, hop-by-hop removed."""
    conn_names = [t for n, v in headers if n == b"connection" for t in _tokens(v)]
    out = bytearray(STATUS_LINES[status])
    _append_fields(out, headers, DROP_RESPONSE, conn_names)
    out += b"\r\n"
    return bytes(out)


def split_target(target: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(authority, path, query) of an origin- or absolute-form target; None when invalid.

    RFC 9112 §3.2: origin-form starts with "/"; absolute-form is "http(s)://authority/...";
    asterisk-form is handled by the caller (OPTIONS only); a fragment is never sent.
    """
    if b"#" in target:
        return None
    authority = b""
    if target[:1] != b"/":
        lower = target[:8].lower()
        if lower.startswith(b"http://"):
            rest = target[7:]
        elif lower.startswith(b"https://"):
            rest = target[8:]
        else:
            return None
        slash = rest.find(b"/")
        qmark = rest.find(b"?")
        end = len(rest)
        if slash >= 0:
            end = slash
        if 0 <= qmark < end:
            end = qmark
        authority = rest[:end]
        if not authority or not valid_host(authority):
            return None
        target = rest[end:]
        if target[:1] == b"?":
            target = b"/" + target
        elif not target:
            target = b"/"
    path, _, query = target.partition(b"?")
    return authority, path, query


def analyse_request(
    method: bytes,
    target: bytes,
    minor: int,
    headers: list[tuple[bytes, bytes]],
    client_ip: bytes,
    proto: bytes,
) -> tuple[int, bytes, bytes, bytes, int, int, int, bytes]:
    """Validate one request head and serialise the head to send upstream.

    Returns (result, host, path, query, framing, content_length, flags, upstream_head);
    result is OK or an E_* code and then the other fields are meaningless.
    """
    if target == b"*":
        # asterisk-form only for a server-wide OPTIONS (RFC 9112 §3.2.4)
        if method != b"OPTIONS":
            return E_BAD_REQUEST, b"", b"", b"", 0, 0, 0, b""
        authority, path, query = b"", b"*", b""
    else:
        parts = split_target(target)
        if parts is None:
            return E_BAD_REQUEST, b"", b"", b"", 0, 0, 0, b""
        authority, path, query = parts
    host = b""
    host_count = 0
    content_length = -1
    te_count = 0
    chunked = False
    te_bad = False
    flags = 0 if minor == 1 else F_CLOSE  # RFC 9112 §9.3: 1.1 persists, 1.0 only on request
    conn_names: list[bytes] = []
    upgrade = False
    xff = b""
    via = b""
    request_id = b""
    for name, value in headers:
        if name == b"host":
            host_count += 1
            host = value
        elif name == b"content-length":
            # llhttp already rejects lists, signs and duplicates; keep the check local anyway
            # (RFC 9112 §6.3 item 5: differing or invalid values are unrecoverable).
            if not _valid_length(value) or content_length >= 0:
                return E_BAD_REQUEST, b"", b"", b"", 0, 0, 0, b""
            content_length = int(value)
        elif name == b"transfer-encoding":
            te_count += 1
            codings = _tokens(value)
            if codings != [b"chunked"]:
                if (codings and codings[-1] == b"chunked") or b"chunked" not in codings:
                    te_bad = True  # a coding we do not implement (gzip, ...): 501
                else:
                    return E_BAD_REQUEST, b"", b"", b"", 0, 0, 0, b""  # chunked not final
            chunked = True
        elif name == b"connection":
            for tok in _tokens(value):
                if tok == b"close":
                    flags |= F_CLOSE
                elif tok == b"keep-alive":
                    if minor == 0:
                        flags &= ~F_CLOSE
                elif tok == b"upgrade":
                    upgrade = True
                else:
                    conn_names.append(tok)
        elif name == b"expect":
            if minor == 1:  # RFC 9110 §10.1.1: ignore Expect from HTTP/1.0
                if value.strip(b" \t").lower() != b"100-continue":
                    return E_EXPECTATION, b"", b"", b"", 0, 0, 0, b""
                flags |= F_EXPECT_CONTINUE
        elif name == b"x-forwarded-for":
            xff = xff + b", " + value if xff else value
        elif name == b"via":
            via = via + b", " + value if via else value
        elif name == b"x-request-id":
            request_id = value if not request_id else b"\x00"  # two ids: neither is valid
        elif name == b"upgrade":
            upgrade = True
    # RFC 9112 §3.2: exactly one Host in HTTP/1.1; absolute-form's authority wins over it.
    if host_count > 1 or (host_count == 0 and minor == 1):
        return E_BAD_REQUEST, b"", b"", b"", 0, 0, 0, b""
    # RFC 9110 §7.2: a Host field with an invalid value MUST be answered with 400.
    if host and not valid_host(host):
        return E_BAD_REQUEST, b"", b"", b"", 0, 0, 0, b""
    if authority:
        host = authority
    if te_count:
        # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing; with
        # Content-Length it is a smuggling vector (§6.3 item 3): reject, never guess.
        if te_count > 1 or minor == 0 or content_length >= 0:
            return E_BAD_REQUEST, b"", b"", b"", 0, 0, 0, b""
        if te_bad:
            return E_TRANSFER_CODING, b"", b"", b"", 0, 0, 0, b""
    framing = FRAME_CHUNKED if chunked else FRAME_LENGTH if content_length >= 0 else FRAME_NONE
    if upgrade:
        flags |= F_UPGRADE
        if framing != FRAME_NONE:
            # llhttp stops at the head of an upgrade request; a body would be smuggled.
            return E_BAD_REQUEST, b"", b"", b"", 0, 0, 0, b""
    if not valid_request_id(request_id):
        request_id = new_request_id()

    out = bytearray(method)
    out += b" "
    out += path
    if query or target.endswith(b"?"):
        out += b"?"
        out += query
    out += b" HTTP/1.1\r\nhost: "
    out += host
    out += b"\r\n"
    _append_fields(out, headers, DROP_REQUEST, conn_names)
    if framing == FRAME_CHUNKED:
        out += b"transfer-encoding: chunked\r\n"
    elif framing == FRAME_LENGTH:
        out += b"content-length: %d\r\n" % content_length
    # RFC 9110 §7.6.3: append our hop to Via; X-Forwarded-For appends the client address.
    out += b"x-forwarded-for: "
    if xff:
        out += xff
        out += b", "
    out += client_ip
    out += b"\r\nx-forwarded-proto: "
    out += proto
    out += b"\r\nvia: "
    if via:
        out += via
        out += b", "
    out += b"1.1 lbproxy\r\nx-request-id: " if minor == 1 else b"1.0 lbproxy\r\nx-request-id: "
    out += request_id
    out += b"\r\n\r\n"
    return OK, host, path, query, framing, max(content_length, 0), flags, bytes(out)


def analyse_response(
    status: int,
    minor: int,
    headers: list[tuple[bytes, bytes]],
    head_request: bool,
    client_minor: int,
    keep_alive: bool,
) -> tuple[int, int, int, int, bool, bool, bytes]:
    """Validate one response head and serialise the head for the client.

    Returns (result, framing_in, framing_out, content_length, upstream_reusable, keep_alive,
    client_head): framing_in is how the backend frames the body, framing_out how the client
    head frames it (Content-Length, chunked for HTTP/1.1 clients, else close-delimited,
    which turns keep_alive off). result is OK or E_BAD_REQUEST (malformed: 502).
    """
    content_length = -1
    te_count = 0
    upstream_reusable = minor == 1
    conn_names: list[bytes] = []
    via = b""
    for name, value in headers:
        if name == b"content-length":
            if not _valid_length(value) or content_length >= 0:
                return E_BAD_REQUEST, 0, 0, 0, False, False, b""
            content_length = int(value)
        elif name == b"transfer-encoding":
            te_count += 1
            # Only "chunked" is understood; anything else is refused as malformed rather
            # than read-until-close (RFC 9112 §6.3 item 4 allows either for responses).
            if _tokens(value) != [b"chunked"]:
                return E_BAD_REQUEST, 0, 0, 0, False, False, b""
        elif name == b"connection":
            for tok in _tokens(value):
                if tok == b"close":
                    upstream_reusable = False
                elif tok == b"keep-alive":
                    if minor == 0:
                        upstream_reusable = True
                elif tok != b"upgrade":
                    conn_names.append(tok)
        elif name == b"via":
            via = via + b", " + value if via else value
    if te_count > 1 or (te_count and content_length >= 0):
        return E_BAD_REQUEST, 0, 0, 0, False, False, b""
    # RFC 9110 §6.4.1: HEAD, 1xx, 204 and 304 responses never carry content.
    no_body = head_request or status == 204 or status == 304 or status < 200
    if no_body:
        framing = FRAME_NONE
    elif te_count:
        framing = FRAME_CHUNKED
    elif content_length >= 0:
        framing = FRAME_LENGTH
    else:
        framing = FRAME_CLOSE
        upstream_reusable = False

    framing_out = framing
    out = bytearray(STATUS_LINES[status] if 100 <= status < 600 else b"HTTP/1.1 %d \r\n" % status)
    _append_fields(out, headers, DROP_RESPONSE, conn_names)
    if content_length >= 0 and status != 204 and (framing == FRAME_LENGTH or no_body):
        # HEAD and 304 keep the backend's Content-Length: it describes the selected
        # representation (RFC 9110 §8.6); 204 must not have one.
        out += b"content-length: %d\r\n" % content_length
    elif framing != FRAME_NONE:
        if client_minor == 1:
            out += b"transfer-encoding: chunked\r\n"
            framing_out = FRAME_CHUNKED
        else:
            framing_out = FRAME_CLOSE
            keep_alive = False  # HTTP/1.0 has no chunked: the close ends the body
    out += b"via: "
    if via:
        out += via
        out += b", "
    out += b"1.1 lbproxy\r\n" if minor == 1 else b"1.0 lbproxy\r\n"
    if not keep_alive:
        out += b"connection: close\r\n\r\n"
    elif client_minor == 0:
        out += b"connection: keep-alive\r\n\r\n"
    else:
        out += b"\r\n"
    clen = max(content_length, 0)
    return OK, framing, framing_out, clen, upstream_reusable, keep_alive, bytes(out)

