"""Build the native core: the compiled modules listed in NATIVE_MODULES.

Build switches live here (as in multidict's setup.py): LBPROXY_DEBUG_BUILD=1 turns on
Cython line tracing and annotation for profiling; the default is an optimised build.
"""

import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent
DEBUG = os.environ.get("LBPROXY_DEBUG_BUILD") == "1"

directives = {
    "language_level": "3",
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "embedsignature": True,
}
macros = []
if DEBUG:
    directives.update({"linetrace": True, "profile": True})
    macros.append(("CYTHON_TRACE_NOGIL", "1"))

# Every compiled module and its source. A ``.pyx`` in csrc/ is a twin of a Python module
# (a different shape in C); a ``.py`` is one source compiled through the ``.pxd`` beside
# it that carries the module's name (lbproxy/native.py lists the pairs).
NATIVE_MODULES = {
    "lbproxy.balance._selectors_c": "csrc/_selectors_c.pyx",
    "lbproxy.balance._latency_c": "lbproxy/balance/latency.py",
    "lbproxy.balance._cluster_c": "lbproxy/balance/cluster.py",
    "lbproxy.proxy._http_c": "csrc/_http_c.pyx",
    "lbproxy.proxy._client_c": "lbproxy/proxy/client.py",
    "lbproxy.proxy._pool_c": "lbproxy/proxy/pool.py",
}


def _forget_stale_c() -> None:
    """Drop generated C older than any .pxd: cythonize does not see that a one-source
    module's augmenting .pxd (or one it cimports) changed, and would keep stale types."""
    pxd_mtime = max(p.stat().st_mtime for p in HERE.glob("**/*.pxd")
                    if ".venv" not in p.parts and "build" not in p.parts)
    for c_file in (HERE / "build" / "cython").glob("**/*.c"):
        if c_file.stat().st_mtime < pxd_mtime:
            c_file.unlink()


_forget_stale_c()

extensions = [
    Extension(
        name,
        [source],
        include_dirs=["csrc"],
        define_macros=macros,
        extra_compile_args=["-O2"] if not DEBUG else ["-O0", "-g"],
    )
    for name, source in NATIVE_MODULES.items()
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=DEBUG,
        build_dir="build/cython",
    ),
)
