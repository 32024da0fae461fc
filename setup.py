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

# Compiled module -> its source.
NATIVE_MODULES = {
    "lbproxy.balance._selectors_c": "csrc/_selectors_c.pyx",
    "lbproxy.proxy._http_c": "csrc/_http_c.pyx",
    "lbproxy._proxy_c": "csrc/_proxy_c.pyx",
    "lbproxy._gate_c": "csrc/_gate_c.pyx",
}

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
