"""The consistent-hash ring: the compiled extension when available, else the Python twin.

``IMPLEMENTATION`` says which one is running (``"c"`` or ``"python"``). Set
``CACHERING_NO_EXTENSIONS=1`` to force the pure-Python twin; both give identical answers.
"""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING

__all__ = ["IMPLEMENTATION", "Ring", "murmur3_32"]

IMPLEMENTATION: str

# Type checkers read the annotated Python twin; the branches stay apart so that mypy
# never considers the compiled module (it has no stubs, by design).
if TYPE_CHECKING:  # noqa: SIM114
    from ._ring_py import Ring, murmur3_32

    IMPLEMENTATION = "python"
elif os.environ.get("CACHERING_NO_EXTENSIONS") or platform.python_implementation() != "CPython":
    from ._ring_py import Ring, murmur3_32

    IMPLEMENTATION = "python"
else:
    try:
        from ._ring_c import Ring, murmur3_32

        IMPLEMENTATION = "c"
    except ImportError:  # no compiler at install time: the twin gives identical answers
        from ._ring_py import Ring, murmur3_32

        IMPLEMENTATION = "python"
