"""The one table of responses the proxy itself produces (docs/admin-api.md lists them all).

Owns status, reason text, the stable ``X-Lbproxy-Error`` code and the precomputed bytes of
every locally generated response. Must not touch sockets: callers write the bytes.
"""

from __future__ import annotations

from typing import Final, NamedTuple


class ProxyError(NamedTuple):
    """One locally generated response: status, stable code, reason, wire bytes."""

    status: int
    code: str
    reason: str
    close: bool
    wire: bytes  # full response, Content-Length framed; precomputed once at import
    head_wire: bytes  # the same without its body: the answer to a HEAD request


_PHRASES: Final = {
    400: "Bad Request",
    404: "Not Found",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


def _build(status: int, code: str, reason: str, close: bool, retry_after: int = 0) -> ProxyError:
    body = f"{reason}\n".encode("ascii")
    lines = [
        f"HTTP/1.1 {status} {_PHRASES[status]}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        f"X-Lbproxy-Error: {code}",
        "Via: 1.1 lbproxy",
    ]
    if retry_after:
        lines.append(f"Retry-After: {retry_after}")
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return ProxyError(status, code, reason, close, head + body, head)


# Anything rejected before the request body was consumed closes the connection: the unread
# body bytes would otherwise be parsed as the next request (RFC 9112 §9.3, §11.2).
BAD_REQUEST: Final = _build(400, "bad_request", "malformed request", True)
NO_ROUTE: Final = _build(404, "no_route", "no route matches this request", False)
NO_ROUTE_CLOSE: Final = _build(404, "no_route", "no route matches this request", True)
REQUEST_TIMEOUT: Final = _build(408, "request_timeout", "client too slow", True)
BODY_TOO_LARGE: Final = _build(413, "body_too_large", "request body too large", True)
URI_TOO_LONG: Final = _build(414, "uri_too_long", "request line too long", True)
EXPECTATION_FAILED: Final = _build(417, "expectation_failed", "unsupported expectation", True)
HEADERS_TOO_LARGE: Final = _build(431, "headers_too_large", "request headers too large", True)
UNSUPPORTED_TRANSFER_CODING: Final = _build(
    501, "unsupported_transfer_coding", "unsupported transfer coding", True
)
# CONNECT (RFC 9110 §9.3.6) asks for a tunnel; this proxy only forwards requests.
UNSUPPORTED_METHOD: Final = _build(501, "unsupported_method", "method not supported", True)
# HTTP/2+ or HTTP/0.9 in an HTTP/1.x request line (RFC 9110 §15.6.6).
VERSION_NOT_SUPPORTED: Final = _build(
    505, "http_version_not_supported", "HTTP version not supported", True
)
BACKEND_FAILED: Final = _build(502, "backend_failed", "backend failed", True)
BACKEND_CONNECT_FAILED: Final = _build(
    502, "backend_connect_failed", "could not connect to backend", True
)
BACKEND_TIMEOUT: Final = _build(504, "backend_timeout", "backend timed out", True)

# The cluster gate's Refusal codes the client may see, and their bodies (a 503 each).
REFUSAL_REASONS: Final = {
    "no_healthy_backend": "no healthy backend",
    "overloaded": "overloaded, request shed",
    "circuit_open": "circuit open",
}
_REFUSALS: dict[tuple[str, int], ProxyError] = {}


def refusal(code: str, retry_after: int) -> ProxyError:
    """The 503 for a cluster's Refusal (overloaded, circuit open, no healthy backend),
    cached."""
    key = (code, retry_after)
    err = _REFUSALS.get(key)
    if err is None:
        reason = REFUSAL_REASONS.get(code, "service unavailable")
        err = _build(503, code, reason, True, max(1, retry_after))
        if len(_REFUSALS) < 256:  # codes are a small fixed set; bound the cache anyway
            _REFUSALS[key] = err
    return err


TABLE: Final = (
    BAD_REQUEST,
    NO_ROUTE,
    REQUEST_TIMEOUT,
    BODY_TOO_LARGE,
    URI_TOO_LONG,
    EXPECTATION_FAILED,
    HEADERS_TOO_LARGE,
    UNSUPPORTED_TRANSFER_CODING,
    UNSUPPORTED_METHOD,
    VERSION_NOT_SUPPORTED,
    BACKEND_FAILED,
    BACKEND_CONNECT_FAILED,
    BACKEND_TIMEOUT,
)
