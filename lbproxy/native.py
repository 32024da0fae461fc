"""The one switch between lbproxy's compiled modules and their Python sources.

Owns reading ``LBPROXY_NO_EXTENSIONS`` (here and nowhere else) and loading each compiled
module or the Python module that stands for it. Two kinds of pairs exist:

- **one source** (as aiohttp compiles ``_websocket/reader_py.py`` into ``reader_c``): the
  Python module *is* the source Cython compiles, through an augmenting ``.pxd`` beside it
  that declares the C types; the stateful per-request code (protocols, the cluster gate)
  is written once and runs either way;
- **twins**, only where the compiled code is a different shape (the selector core's C
  arrays, the head checks' lookup tables): a ``.pyx`` in ``csrc/`` beside a Python
  module with the same API, and hypothesis tests that the two agree.

Any non-empty value other than ``0`` selects the Python modules everywhere. Without it a
compiled module that does not load is an error that says how to fix it, never a silent
fall back to Python: a checkout or an install whose build is missing or broken must not
quietly run at a fraction of its speed. Facades (``lbproxy.balance.selectors``,
``lbproxy.balance.gate``, ``lbproxy.proxy.http``, ``lbproxy.proxy.protocols``) call
`load`; nothing else imports a compiled module by name. Must not import any of them.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Final

NO_EXTENSIONS: Final = os.environ.get("LBPROXY_NO_EXTENSIONS", "") not in ("", "0")

# compiled module -> the Python module used instead (the same file for one-source modules)
COMPILED: Final = {
    "lbproxy.balance._selectors_c": "lbproxy.balance._selectors_py",  # twin
    "lbproxy.balance._latency_c": "lbproxy.balance.latency",  # one source
    "lbproxy.balance._cluster_c": "lbproxy.balance.cluster",  # one source
    "lbproxy.proxy._http_c": "lbproxy.proxy._http_py",  # twin
    "lbproxy.proxy._client_c": "lbproxy.proxy.client",  # one source
    "lbproxy.proxy._pool_c": "lbproxy.proxy.pool",  # one source
}
# The pairs where the Python module is the very file Cython compiles.
ONE_SOURCE: Final = frozenset(
    c for c, py in COMPILED.items() if not py.endswith("_py"))


class BuildMissing(ImportError):
    """A compiled module did not load and LBPROXY_NO_EXTENSIONS was not set."""


def load(compiled: str) -> ModuleType:
    """The compiled module, or its Python stand-in when LBPROXY_NO_EXTENSIONS is set."""
    if NO_EXTENSIONS:
        return importlib.import_module(COMPILED[compiled])
    try:
        return importlib.import_module(compiled)
    except ImportError as exc:
        raise BuildMissing(
            f"lbproxy's compiled module {compiled} did not load ({exc}); build it with "
            "`make build` (or `pip install .`), or set LBPROXY_NO_EXTENSIONS=1 to run the "
            "pure-Python modules") from exc


def in_use() -> dict[str, str]:
    """Each compiled module's name -> the name of the module serving it in this process."""
    return {c: (COMPILED[c] if NO_EXTENSIONS else c) for c in COMPILED}


class _PureMode:
    """Stands in for Cython's ``cython`` module where Cython is not installed."""

    compiled = False


# One-source modules start with ``try: import cython / except ImportError: from
# lbproxy.native import pure_mode as cython``: compiled, ``cython.compiled`` is True at
# compile time and guards the Python imports of names the .pxd declares in C.
pure_mode: Final = _PureMode()
