"""Facade over the two protocols: the compiled ``lbproxy._proxy_c`` or the twins.

The twins are ``lbproxy.proxy.client`` (ClientConnection, Exchange) and
``lbproxy.proxy.pool`` (UpstreamConnection, UpstreamPool). ``LBPROXY_NO_EXTENSIONS=1``
(or a missing build) selects them; type checkers always read them. ``NATIVE`` says which
one is in use. Must not hold any behaviour of its own.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

NATIVE = False
if TYPE_CHECKING or os.environ.get("LBPROXY_NO_EXTENSIONS") == "1":
    from lbproxy.proxy.client import ClientConnection, Exchange
    from lbproxy.proxy.pool import UpstreamConnection, UpstreamPool
else:
    try:
        from lbproxy._proxy_c import (
            ClientConnection,
            Exchange,
            UpstreamConnection,
            UpstreamPool,
        )

        NATIVE = True
    except ImportError:  # not built (e.g. a source checkout without a compiler)
        from lbproxy.proxy.client import ClientConnection, Exchange
        from lbproxy.proxy.pool import UpstreamConnection, UpstreamPool

__all__ = ["NATIVE", "ClientConnection", "Exchange", "UpstreamConnection", "UpstreamPool"]
