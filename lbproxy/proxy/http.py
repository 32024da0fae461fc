"""Facade over the request/response head code: the compiled twin ``_http_c`` or ``_http_py``.

The two are twins (the compiled one uses C lookup tables and builds each head in one
buffer; tests/test_proxy_http_twin.py checks with hypothesis that they agree), chosen by
lbproxy/native.py; type checkers always read the Python one. Codes come from
lbproxy/codes.py and tables from the Python twin (they are data, not code).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lbproxy import native
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
from lbproxy.proxy._http_py import interim_head

NATIVE = not native.NO_EXTENSIONS

if TYPE_CHECKING:
    from lbproxy.proxy._http_py import (
        HeadCollector,
        analyse_request,
        analyse_response,
        new_request_id,
        valid_request_id,
    )
else:
    _impl = native.load("lbproxy.proxy._http_c")
    HeadCollector = _impl.HeadCollector
    analyse_request = _impl.analyse_request
    analyse_response = _impl.analyse_response
    new_request_id = _impl.new_request_id
    valid_request_id = _impl.valid_request_id

__all__ = [
    "E_BAD_REQUEST",
    "E_EXPECTATION",
    "E_TRANSFER_CODING",
    "FRAME_CHUNKED",
    "FRAME_CLOSE",
    "FRAME_LENGTH",
    "FRAME_NONE",
    "F_CLOSE",
    "F_EXPECT_CONTINUE",
    "F_UPGRADE",
    "NATIVE",
    "OK",
    "HeadCollector",
    "analyse_request",
    "analyse_response",
    "interim_head",
    "new_request_id",
    "valid_request_id",
]
