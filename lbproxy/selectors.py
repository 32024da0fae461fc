"""Selector facade: the native core (`lbproxy._selectors_c`) or its pure-Python twin.

Owns only the choice of implementation, as yarl's `_quoting.py` does: the twin when type
checking or when LBPROXY_NO_EXTENSIONS is set (or the extension failed to build), the
compiled module otherwise. `NATIVE` says which one loaded; tests fail when it is False
without LBPROXY_NO_EXTENSIONS set deliberately.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

NO_EXTENSIONS = bool(os.environ.get("LBPROXY_NO_EXTENSIONS"))

if TYPE_CHECKING or NO_EXTENSIONS:
    from lbproxy._selectors_py import (
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

    NATIVE = False
else:
    try:
        from lbproxy._selectors_c import (
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

        NATIVE = True
    except ImportError:  # pragma: no cover - a build without the compiled core
        from lbproxy._selectors_py import (
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

        NATIVE = False

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
