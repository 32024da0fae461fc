"""Facade over the request/response head code: the compiled ``lbproxy.proxy._http_c`` or its twin.

``LBPROXY_NO_EXTENSIONS=1`` (or a missing build) selects the pure-Python twin
``lbproxy.proxy._http_py``; type checkers always read the twin. ``NATIVE`` says which one
is in use. Constants and tables always come from the twin (they are data, not code).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from lbproxy.proxy._http_py import (
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
    interim_head,
)

NATIVE = False
if TYPE_CHECKING or os.environ.get("LBPROXY_NO_EXTENSIONS") == "1":
    from lbproxy.proxy._http_py import (
        HeadCollector,
        analyse_request,
        analyse_response,
        new_request_id,
        valid_request_id,
    )
else:
    try:
        from lbproxy.proxy._http_c import (
            HeadCollector,
            analyse_request,
            analyse_response,
            new_request_id,
            valid_request_id,
        )

        NATIVE = True
    except ImportError:  # not built (e.g. a source checkout without a compiler)
        from lbproxy.proxy._http_py import (
            HeadCollector,
            analyse_request,
            analyse_response,
            new_request_id,
            valid_request_id,
        )

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
