"""Selector facade: the compiled selector core (`_selectors_c`) or its pure-Python twin.

Owns only the choice of implementation, as yarl's `_quoting.py` does: type checkers read
the twin (`_selectors_py`); at run time lbproxy/native.py loads the compiled module, or
the twin when LBPROXY_NO_EXTENSIONS is set. The two are twins, not one source, because
the compiled core is a different shape (C arrays, a C lookup table); hypothesis tests in
tests/selector_core/ check that they agree pick for pick. `NATIVE` says which one loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lbproxy import native

__all__ = [
    "DEFAULT_DECAY_NS",
    "DEFAULT_RTT_NS",
    "DEFAULT_TABLE_SIZE",
    "NATIVE",
    "BackendLoad",
    "BoundedLoadSelector",
    "MaglevSelector",
    "P2CSelector",
    "RoundRobinSelector",
    "hash64",
]

NATIVE = not native.NO_EXTENSIONS

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
else:
    _impl = native.load("lbproxy.balance._selectors_c")
    globals().update({name: getattr(_impl, name) for name in _impl.__all__})
    del _impl
