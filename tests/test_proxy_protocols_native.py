"""The compiled protocols (`lbproxy._proxy_c`) loaded, and the facade picked them.

Agreement between them and their twins (`lbproxy.proxy.client`, `lbproxy.proxy.pool`) is
the whole test suite passing on both (`LBPROXY_NO_EXTENSIONS=1 make test`).
"""

from __future__ import annotations

import importlib
import os

import pytest

from lbproxy.proxy import protocols


def test_native_protocols_loaded() -> None:
    """Fails when the build did not produce lbproxy._proxy_c (yarl's test_quoting_c_loaded)."""
    if os.environ.get("LBPROXY_NO_EXTENSIONS") == "1":
        pytest.skip("extensions disabled on purpose")
    native = importlib.import_module("lbproxy._proxy_c")
    assert protocols.NATIVE
    assert protocols.ClientConnection is native.ClientConnection
    assert protocols.UpstreamPool is native.UpstreamPool


def test_twin_protocols_selected_without_extensions() -> None:
    """LBPROXY_NO_EXTENSIONS=1 selects the pure-Python twins."""
    if os.environ.get("LBPROXY_NO_EXTENSIONS") != "1":
        pytest.skip("extensions enabled")
    from lbproxy.proxy import client, pool

    assert not protocols.NATIVE
    assert protocols.ClientConnection is client.ClientConnection
    assert protocols.UpstreamPool is pool.UpstreamPool
