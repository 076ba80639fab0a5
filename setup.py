"""Build the compiled ring and RESP encoder, unless CACHERING_NO_EXTENSIONS is set or this is not CPython."""

import os
import platform

from setuptools import setup

ext_modules = []
if not os.environ.get("CACHERING_NO_EXTENSIONS") and platform.python_implementation() == "CPython":
    from Cython.Build import cythonize

    ext_modules = cythonize(
        ["src/cachering/ring/_ring_c.pyx", "src/cachering/resp/_resp_c.pyx"],
        compiler_directives={"language_level": "3"},
    )

setup(ext_modules=ext_modules)
