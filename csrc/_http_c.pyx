# cython: language_level=3
"""Compiled twin of ``lbproxy.proxy._http_py``: request/response head validation and rewrite.

Built as ``lbproxy.proxy._http_c``; ``lbproxy/proxy/_http_c.pxd`` declares `HeadCollector`,
the base class the compiled protocols (lbproxy/proxy/client.py, pool.py) cimport.

Same functions, same results (tests/test_proxy_http_twin.py checks it with hypothesis); the
comments and RFC citations live in the twin. What is native here: character-class checks
over C lookup tables, one bytearray built per head, no intermediate lists on the common
path (a Connection header naming other headers is the only case that allocates a list).
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_SIZE

from libc.stdint cimport uint64_t

import os

from lbproxy.proxy._http_py import STATUS_LINES as _STATUS_LINES_DICT

from lbproxy._codes cimport *  # every shared code, as C enums

cdef unsigned char _ID_OK[256]
cdef unsigned char _DIGIT[256]


cdef void _fill(unsigned char* table, bytes chars):
    cdef Py_ssize_t i
    for i in range(256):
        table[i] = 0
    for i in range(len(chars)):
        table[<unsigned char>chars[i]] = 1


_fill(_ID_OK, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")
_fill(_DIGIT, b"0123456789")

# uri-host character classes (RFC 3986 §3.2.2), the twin's frozensets as C tables: Host is
# checked on every request, and the twin's issuperset calls were ~8 % of its CPU.
cdef unsigned char _REG_NAME[256]
cdef unsigned char _IP_LITERAL[256]
_fill(_REG_NAME, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=%")
_fill(_IP_LITERAL, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:%")


cdef inline bint _span_in(const unsigned char* table, const char* p, Py_ssize_t a,
                          Py_ssize_t b) noexcept:
    cdef Py_ssize_t i
    for i in range(a, b):
        if not table[<unsigned char>p[i]]:
            return False
    return True


cpdef bint valid_host(bytes value):
    """True when `value` is uri-host [":" port] (RFC 9110 §7.2, RFC 3986 §3.2.2-3.2.3)."""
    cdef const char* p = PyBytes_AS_STRING(value)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value)
    cdef Py_ssize_t i, end = -1, rest
    if n and p[0] == b'[':
        for i in range(1, n):
            if p[i] == b']':
                end = i
                break
        if end < 2 or not _span_in(_IP_LITERAL, p, 1, end):
            return False
        rest = end + 1
    else:
        rest = n
        for i in range(n):
            if p[i] == b':':
                rest = i
                break
        if not _span_in(_REG_NAME, p, 0, rest):
            return False
    # what follows the host: nothing, or ":" and digits only (an empty port is valid)
    return rest == n or (p[rest] == b':' and _span_in(_DIGIT, p, rest + 1, n))

cdef list _STATUS_LINES = [None] * 600
for _code, _line in _STATUS_LINES_DICT.items():
    _STATUS_LINES[_code] = _line

from lbproxy.proxy._http_py import DROP_REQUEST as _DROP_REQUEST_PY
from lbproxy.proxy._http_py import DROP_RESPONSE as _DROP_RESPONSE_PY

cdef frozenset _DROP_REQUEST = _DROP_REQUEST_PY
cdef frozenset _DROP_RESPONSE = _DROP_RESPONSE_PY
cdef tuple _BAD_REQ = (E_BAD_REQUEST, b"", b"", b"", 0, 0, 0, b"")
cdef tuple _BAD_RESP = (E_BAD_REQUEST, 0, 0, 0, False, False, b"")


cdef class HeadCollector:
    """Parser-callback base: collects header fields, lowercased, within the head limits."""

    def __cinit__(self, *args, **kwargs):
        self.headers = []
        self.header_bytes = 0
        self.max_header_bytes = 65536
        self.max_headers = 100
        self.in_head = False

    def on_header(self, bytes name, bytes value):
        """httptools callback: one field; ignored outside the head (trailers are dropped)."""
        if not self.in_head:
            return
        self.header_bytes += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 4
        if (self.header_bytes > self.max_header_bytes
                or PyList_GET_SIZE(self.headers) >= self.max_headers):
            self.head_too_large()
            return
        # RFC 9110 §5.5: leading and trailing whitespace is not part of a field value;
        # llhttp drops the leading OWS only ("Content-Length: 5 " must mean 5).
        cdef Py_ssize_t n = PyBytes_GET_SIZE(value)
        if n and PyBytes_AS_STRING(value)[n - 1] in (32, 9):
            value = value.rstrip(b" \t")
        self.headers.append((name.lower(), value))

    def head_too_large(self):
        """Called when a limit is passed; subclasses raise their own error."""
        raise ValueError("header limits exceeded")


# Request ids: 96 bits from xoshiro256** (Blackman & Vigna 2018) seeded from os.urandom;
# ids need to be unique and unguessable enough for tracing, not cryptographic secrets.
cdef uint64_t _rng[4]
_seed = os.urandom(32)
for _i in range(4):
    _rng[_i] = int.from_bytes(_seed[8 * _i : 8 * _i + 8], "little") | 1


cdef inline uint64_t _rotl(uint64_t x, int k):
    return (x << k) | (x >> (64 - k))


cdef inline uint64_t _next64():
    cdef uint64_t result = _rotl(_rng[1] * 5, 7) * 9
    cdef uint64_t t = _rng[1] << 17
    _rng[2] ^= _rng[0]
    _rng[3] ^= _rng[1]
    _rng[1] ^= _rng[2]
    _rng[0] ^= _rng[3]
    _rng[2] ^= t
    _rng[3] = _rotl(_rng[3], 45)
    return result


cdef char* _HEX = b"0123456789abcdef"


def new_request_id():
    """A fresh random request id: 24 lowercase hex digits (96 bits)."""
    cdef char buf[24]
    cdef uint64_t a = _next64(), b = _next64()
    cdef int i
    for i in range(16):
        buf[i] = _HEX[(a >> (60 - 4 * i)) & 15]
    for i in range(8):
        buf[16 + i] = _HEX[(b >> (60 - 4 * i)) & 15]
    return buf[:24]


cdef inline bint _all_in(bytes value, unsigned char* table):
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(value)
    for i in range(n):
        if not table[p[i]]:
            return False
    return True


def valid_request_id(bytes value):
    """True when a client's X-Request-Id may be kept (1-128 of [A-Za-z0-9._:-])."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value)
    return 0 < n <= 128 and _all_in(value, _ID_OK)


cdef long long _content_length(bytes value):
    """The value as a number, or -1 when it is not 1*DIGIT (or absurdly long)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(value)
    cdef long long v = 0
    if n == 0 or n > 18:  # more than 10**18 bytes is not a real body
        return -1
    for i in range(n):
        if not _DIGIT[p[i]]:
            return -1
        v = v * 10 + (p[i] - 48)
    return v


cdef inline void _append_fields(bytearray out, list headers, frozenset drop, list conn_names):
    """Serialise every field not in `drop` nor named by Connection."""
    cdef tuple pair
    cdef bytes name
    for pair in headers:
        name = <bytes>pair[0]
        if name in drop or (conn_names is not None and name in conn_names):
            continue
        out += name
        out += b": "
        out += <bytes>pair[1]
        out += b"\r\n"


cdef list _tokens(bytes value):
    return [t.strip(b" \t").lower() for t in value.split(b",") if t.strip(b" \t")]


cdef inline bint _is_chunked(bytes value):
    # fast path for the exact common spelling; everything else goes through _tokens
    return value == b"chunked" or _tokens(value) == [b"chunked"]


def split_target(bytes target):
    """(authority, path, query) of an origin- or absolute-form target; None when invalid."""
    return _split_target(target)


cdef object _split_target(bytes target):
    cdef bytes authority = b"", rest, lower
    cdef Py_ssize_t slash, qmark, end
    if b"#" in target:
        return None
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


@cython.boundscheck(False)
def analyse_request(bytes method, bytes target, int minor, list headers, bytes client_ip,
                    bytes proto):
    """Validate one request head and serialise the head to send upstream (see the twin)."""
    cdef bytes authority, path, query, name, value, tok
    cdef bytes host = b"", xff = b"", via = b"", request_id = b""
    cdef int host_count = 0, te_count = 0, flags, framing
    cdef long long content_length = -1, v
    cdef bint chunked = False, te_bad = False, upgrade = False
    cdef list conn_names = None, codings
    cdef tuple pair
    cdef bytearray out
    if target == b"*":
        if method != b"OPTIONS":
            return _BAD_REQ
        authority, path, query = b"", b"*", b""
    else:
        parts = _split_target(target)
        if parts is None:
            return _BAD_REQ
        authority, path, query = parts
    flags = 0 if minor == 1 else F_CLOSE
    for pair in headers:
        name = <bytes>pair[0]
        value = <bytes>pair[1]
        if name == b"host":
            host_count += 1
            host = value
        elif name == b"content-length":
            v = _content_length(value)
            if v < 0 or content_length >= 0:
                return _BAD_REQ
            content_length = v
        elif name == b"transfer-encoding":
            te_count += 1
            if not _is_chunked(value):
                codings = _tokens(value)
                if (codings and codings[len(codings) - 1] == b"chunked") or b"chunked" not in codings:
                    te_bad = True
                else:
                    return _BAD_REQ
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
                    if conn_names is None:
                        conn_names = []
                    conn_names.append(tok)
        elif name == b"expect":
            if minor == 1:
                if value.strip(b" \t").lower() != b"100-continue":
                    return (E_EXPECTATION, b"", b"", b"", 0, 0, 0, b"")
                flags |= F_EXPECT_CONTINUE
        elif name == b"x-forwarded-for":
            xff = xff + b", " + value if xff else value
        elif name == b"via":
            via = via + b", " + value if via else value
        elif name == b"x-request-id":
            request_id = value if not request_id else b"\x00"
        elif name == b"upgrade":
            upgrade = True
    if host_count > 1 or (host_count == 0 and minor == 1):
        return _BAD_REQ
    if host and not valid_host(host):
        return _BAD_REQ
    if authority:
        host = authority
    if te_count:
        if te_count > 1 or minor == 0 or content_length >= 0:
            return _BAD_REQ
        if te_bad:
            return (E_TRANSFER_CODING, b"", b"", b"", 0, 0, 0, b"")
    framing = FRAME_CHUNKED if chunked else FRAME_LENGTH if content_length >= 0 else FRAME_NONE
    if upgrade:
        flags |= F_UPGRADE
        if framing != FRAME_NONE:
            return _BAD_REQ
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
    _append_fields(out, headers, _DROP_REQUEST, conn_names)
    if framing == FRAME_CHUNKED:
        out += b"transfer-encoding: chunked\r\n"
    elif framing == FRAME_LENGTH:
        out += b"content-length: "
        out += str(content_length).encode("ascii")
        out += b"\r\n"
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
    return (OK, host, path, query, framing, content_length if content_length > 0 else 0,
            flags, bytes(out))


@cython.boundscheck(False)
def analyse_response(int status, int minor, list headers, bint head_request, int client_minor,
                     bint keep_alive):
    """Validate one response head and serialise the head for the client (see the twin)."""
    cdef long long content_length = -1, v
    cdef int te_count = 0, framing, framing_out
    cdef bint upstream_reusable = minor == 1, no_body
    cdef list conn_names = None
    cdef bytes via = b"", name, value, tok
    cdef tuple pair
    cdef bytearray out
    for pair in headers:
        name = <bytes>pair[0]
        value = <bytes>pair[1]
        if name == b"content-length":
            v = _content_length(value)
            if v < 0 or content_length >= 0:
                return _BAD_RESP
            content_length = v
        elif name == b"transfer-encoding":
            te_count += 1
            if not _is_chunked(value):
                return _BAD_RESP
        elif name == b"connection":
            for tok in _tokens(value):
                if tok == b"close":
                    upstream_reusable = False
                elif tok == b"keep-alive":
                    if minor == 0:
                        upstream_reusable = True
                elif tok != b"upgrade":
                    if conn_names is None:
                        conn_names = []
                    conn_names.append(tok)
        elif name == b"via":
            via = via + b", " + value if via else value
    if te_count > 1 or (te_count and content_length >= 0):
        return _BAD_RESP
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
    if 100 <= status < 600:
        out = bytearray(<bytes>_STATUS_LINES[status])
    else:
        out = bytearray(b"HTTP/1.1 ")
        out += str(status).encode("ascii")
        out += b" \r\n"
    _append_fields(out, headers, _DROP_RESPONSE, conn_names)
    if content_length >= 0 and status != 204 and (framing == FRAME_LENGTH or no_body):
        out += b"content-length: "
        out += str(content_length).encode("ascii")
        out += b"\r\n"
    elif framing != FRAME_NONE:
        if client_minor == 1:
            out += b"transfer-encoding: chunked\r\n"
            framing_out = FRAME_CHUNKED
        else:
            framing_out = FRAME_CLOSE
            keep_alive = False
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
    return (OK, framing, framing_out, content_length if content_length > 0 else 0,
            upstream_reusable, keep_alive, bytes(out))
