"""Facade over the two protocols: the compiled ``_client_c`` / ``_pool_c`` or their source.

The client protocol (ClientConnection, Exchange) is written once in
lbproxy/proxy/client.py and the upstream one (UpstreamConnection, UpstreamPool) in
lbproxy/proxy/pool.py; Cython compiles each through the ``.pxd`` beside it.
lbproxy/native.py picks the build; type checkers read the sources. ``NATIVE`` says
which one is in use. Must not hold any behaviour of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lbproxy import native

NATIVE = not native.NO_EXTENSIONS

if TYPE_CHECKING:
    from lbproxy.proxy.client import ClientConnection, Exchange
    from lbproxy.proxy.pool import UpstreamConnection, UpstreamPool
else:
    _client = native.load("lbproxy.proxy._client_c")
    _pool = native.load("lbproxy.proxy._pool_c")
    ClientConnection, Exchange = _client.ClientConnection, _client.Exchange
    UpstreamConnection, UpstreamPool = _pool.UpstreamConnection, _pool.UpstreamPool

__all__ = ["NATIVE", "ClientConnection", "Exchange", "UpstreamConnection", "UpstreamPool"]
