"""Small integer codes shared by the compiled modules and the Python code.

Owns the values of every code that crosses a module boundary on the request path: what a
request head check concluded, how a message body is framed (RFC 9112 §6), the flags of a
request head, and how a leased request ended. ``lbproxy/_codes.pxd`` declares the same
values as C enums for the compiled modules, which ``cimport`` them from there (one
declaration, not a copy per module); tests/test_native.py checks the two files agree.
Must not import anything of lbproxy's.
"""

from __future__ import annotations

from enum import IntEnum

# What analyse_request / analyse_response concluded; the client protocol maps the E_*
# codes to entries of lbproxy/proxy/errors.py.
OK = 0
E_BAD_REQUEST = 1
E_TRANSFER_CODING = 2
E_EXPECTATION = 3

# Message body framing (RFC 9112 §6.3).
FRAME_NONE = 0
FRAME_LENGTH = 1
FRAME_CHUNKED = 2
FRAME_CLOSE = 3  # responses only: the body ends when the backend closes

# Flag bits of a request head.
F_CLOSE = 1  # the client asked to close (or HTTP/1.0 without keep-alive)
F_EXPECT_CONTINUE = 2  # "Expect: 100-continue" from an HTTP/1.1 client
F_UPGRADE = 4  # Connection: upgrade + Upgrade (forwarded as a plain request)


class Outcome(IntEnum):
    """How a leased request ended, as the data plane saw it."""

    OK = 0  # a response was relayed (any status below 500)
    HTTP_5XX = 1  # the backend answered 5xx
    CONNECT_FAILED = 2
    RESET = 3  # the backend closed or reset mid-exchange
    TIMEOUT = 4
    CLIENT_ABORT = 5  # the client went away: not the backend's fault


# The same values as plain ints, for code that compares them per request.
OUTCOME_OK = 0
OUTCOME_HTTP_5XX = 1
OUTCOME_CONNECT_FAILED = 2
OUTCOME_RESET = 3
OUTCOME_TIMEOUT = 4
OUTCOME_CLIENT_ABORT = 5
N_OUTCOMES = 6
