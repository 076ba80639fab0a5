"""Check what a built sdist or wheel holds: the files a user needs, nothing it must not.

    python .ci/check_dist.py dist/cachering-*.tar.gz wheelhouse/*.whl

Every distribution must carry LICENSE, py.typed and the Cython sources (.pyx, .pxi);
an sdist also the tests and docs, and no generated C; a wheel with compiled modules
must carry both of them, without debug information. Exit status 1 on any problem.
"""

from __future__ import annotations

import sys
import tarfile
import zipfile
from pathlib import PurePosixPath

SOURCES = (
    "cachering/py.typed",
    "cachering/ring/_ring_c.pyx",
    "cachering/ring/_ring_hash.pxi",
    "cachering/resp/_resp_c.pyx",
)
SDIST_ONLY = ("LICENSE", "setup.py", "pyproject.toml", "tests/conftest.py", "docs/design.md")
COMPILED = ("cachering/ring/_ring_c", "cachering/resp/_resp_c")
DEBUG_SECTIONS = (b".debug_info", b"__debug_info")


def _sdist(path: str) -> tuple[dict[str, bytes | None], list[str]]:
    with tarfile.open(path) as tar:
        names = [m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name]
    return dict.fromkeys(names), ["src/" + s for s in SOURCES] + list(SDIST_ONLY)


def _wheel(path: str) -> tuple[dict[str, bytes | None], list[str]]:
    with zipfile.ZipFile(path) as whl:
        files = {
            n: (whl.read(n) if n.endswith((".so", ".pyd")) else None) for n in whl.namelist()
        }
    licenses = [n for n in files if n.endswith(".dist-info/licenses/LICENSE")]
    return files, [*SOURCES, *(licenses[:1] or ["*.dist-info/licenses/LICENSE"])]


def check(path: str) -> list[str]:
    """The problems found in one distribution (empty when it is complete)."""
    is_wheel = path.endswith(".whl")
    files, required = _wheel(path) if is_wheel else _sdist(path)
    problems = [f"{path}: missing {name}" for name in required if name not in files]
    generated = [n for n in files if n.endswith((".c", ".so", ".pyd")) and not is_wheel]
    problems += [f"{path}: generated file {n} does not belong in an sdist" for n in generated]
    if is_wheel and "-none-any" not in path:
        for module in COMPILED:
            built = [n for n in files if n.startswith(module) and n.endswith((".so", ".pyd"))]
            if not built:
                problems.append(f"{path}: platform wheel without {module}")
            for name in built:
                data = files[name] or b""
                if any(section in data for section in DEBUG_SECTIONS):
                    problems.append(f"{path}: {name} has debug information")
                print(f"{PurePosixPath(name).name}: {len(data):,} bytes")
    return problems


def main(paths: list[str]) -> int:
    """Check every path; print each problem; 1 if there was any."""
    if not paths:
        print(__doc__)
        return 2
    problems = [problem for path in paths for problem in check(path)]
    for problem in problems:
        print(problem)
    if not problems:
        print(f"ok: {len(paths)} distribution(s) complete")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
