"""Selector facade: the native core (`lbproxy.balance._selectors_c`) or its pure-Python twin.

Owns only the choice of implementation, as yarl's `_quoting.py` does: type checkers read
the twin; at run time the compiled module loads unless LBPROXY_NO_EXTENSIONS is set, and
the twin stands in when the extension was not built. `NATIVE` says which one loaded; the
test suite fails when it is False without LBPROXY_NO_EXTENSIONS set deliberately.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

NO_EXTENSIONS = bool(os.environ.get("LBPROXY_NO_EXTENSIONS"))

__all__ = [
    "DEFAULT_DECAY_NS",
    "DEFAULT_RTT_NS",
    "DEFAULT_TABLE_SIZE",
    "NATIVE",
    "NO_EXTENSIONS",
    "BackendLoad",
    "BoundedLoadSelector",
    "MaglevSelector",
    "P2CSelector",
    "RoundRobinSelector",
    "hash64",
]

if TYPE_CHECKING:
    from lbproxy.balance._selectors_py import (
        DEFAULT_DECAY_NS,
        DEFAULT_RTT_NS,
        DEFAULT_TABLE_SIZE,
        BackendLoad,
        BoundedLoadSelector,
        MaglevSelector,
        P2CSelector,
        RoundRobinSelector,
        hash64,
    )

    NATIVE: bool
else:
    NATIVE = False
    _impl = None
    if not NO_EXTENSIONS:
        try:
            _impl = importlib.import_module("lbproxy.balance._selectors_c")
            NATIVE = True
        except ImportError:  # pragma: no cover - a build without the compiled core
            pass
    if _impl is None:
        _impl = importlib.import_module("lbproxy.balance._selectors_py")
    globals().update({name: getattr(_impl, name) for name in _impl.__all__})
    del _impl
