"""Build the compiled ring and RESP encoder where a C compiler works.

The extensions are optional: where compiling fails, one line says so and the
pure-Python package is installed (the ring's Python twin and hiredis' encoder give the
same answers). ``CACHERING_REQUIRE_EXTENSIONS=1`` turns that into an error (wheel builds
set it); ``CACHERING_NO_EXTENSIONS=1`` skips compiling altogether. Other than CPython
builds nothing.
"""

import os
import platform
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

# The errors a missing or broken compiler surfaces as, across setuptools versions.
try:
    from setuptools.errors import CCompilerError, ExecError, PlatformError

    _COMPILE_ERRORS: tuple[type[BaseException], ...] = (
        CCompilerError,
        ExecError,
        PlatformError,
        OSError,
    )
except ImportError:  # pragma: no cover - setuptools older than 59
    from distutils.errors import CCompilerError, DistutilsExecError, DistutilsPlatformError

    _COMPILE_ERRORS = (CCompilerError, DistutilsExecError, DistutilsPlatformError, OSError)


# Like the run-time switch, CACHERING_NO_EXTENSIONS counts when set to anything.
NO_EXTENSIONS = bool(os.environ.get("CACHERING_NO_EXTENSIONS"))
REQUIRED = os.environ.get("CACHERING_REQUIRE_EXTENSIONS", "") not in ("", "0")


class OptionalBuildExt(build_ext):
    """build_ext that falls back to pure Python unless CACHERING_REQUIRE_EXTENSIONS is set.

    The first extension that fails to compile ends the attempt; one line says why.
    """

    def initialize_options(self) -> None:
        super().initialize_options()
        self._failed: list[str] = []
        self._reason = ""

    def run(self) -> None:
        try:
            super().run()
        except _COMPILE_ERRORS as exc:  # no compiler at all (e.g. no MSVC on Windows)
            if REQUIRED:
                raise
            self._failed, self._reason = [e.name for e in self.extensions], type(exc).__name__
        if self._failed:
            print(
                f"cachering: C extensions not built ({', '.join(self._failed)}: "
                f"{self._reason}, the C compiler failed); installing the pure-Python package "
                "(set CACHERING_REQUIRE_EXTENSIONS=1 to make this an error)",
                file=sys.stderr,
            )

    def build_extension(self, ext) -> None:
        if self._failed:  # the compiler already failed once: do not try it again
            self._failed.append(ext.name)
            return
        try:
            super().build_extension(ext)
        except _COMPILE_ERRORS as exc:
            if REQUIRED:
                raise
            self._failed.append(ext.name)
            self._reason = type(exc).__name__


def _extensions() -> list:
    if NO_EXTENSIONS or platform.python_implementation() != "CPython":
        if REQUIRED:
            raise SystemExit(
                "CACHERING_REQUIRE_EXTENSIONS is set, but CACHERING_NO_EXTENSIONS is set "
                "or this is not CPython"
            )
        return []
    from Cython.Build import cythonize

    # No debug information in the shipped modules (a tenth of the size).
    compile_args: list[str] = []
    link_args: list[str] = []
    if sys.platform.startswith("linux"):
        compile_args, link_args = ["-g0"], ["-s"]
    elif sys.platform == "darwin":
        compile_args, link_args = ["-g0"], ["-Wl,-S,-x"]
    modules = cythonize(
        ["src/cachering/ring/_ring_c.pyx", "src/cachering/resp/_resp_c.pyx"],
        compiler_directives={"language_level": "3"},
    )
    for module in modules:
        module.extra_compile_args = [*module.extra_compile_args, *compile_args]
        module.extra_link_args = [*module.extra_link_args, *link_args]
    return list(modules)


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
