"""Build the native core: every csrc/<name>.pyx becomes the extension lbproxy.<name>.

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

extensions = [
    Extension(
        f"lbproxy.{pyx.stem}",
        [str(pyx.relative_to(HERE))],
        include_dirs=["csrc"],
        define_macros=macros,
        extra_compile_args=["-O2"] if not DEBUG else ["-O0", "-g"],
    )
    for pyx in sorted((HERE / "csrc").glob("*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=DEBUG,
        build_dir="build/cython",
    ),
)
