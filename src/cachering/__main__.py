"""``python -m cachering``: the same command line as the ``cachering`` script."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    try:
        from .cli import main
    except KeyboardInterrupt:  # Ctrl-C while still importing: exit quietly like main() does
        sys.exit(130)
    sys.exit(main())
