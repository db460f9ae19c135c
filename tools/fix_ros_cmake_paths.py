"""Point the ROS message wheels' CMake exports at this interpreter's include directories.

The `ros-kilted-*-msgs` wheels are built in a manylinux container, and their installed
`share/<pkg>/cmake/*.cmake` files hard-code that container's Python and numpy include paths
(`/opt/python/cp311-cp311/...`). Building our own rosidl package (sernf_interfaces) against
them then fails with missing headers. docs/design.md §3: rewrite them after every msgs install.

Usage: python tools/fix_ros_cmake_paths.py <venv prefix>
"""

from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path

import numpy

# Matches e.g. /opt/python/cp311-cp311/include/python3.11 and
# /opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include
_BUILDER_PYTHON_INCLUDE = re.compile(r"/opt/python/[^/;\"\s]+/include/python3\.\d+")
_BUILDER_NUMPY_INCLUDE = re.compile(r"/opt/python/[^;\"\s]+/site-packages/numpy/_core/include")


def fix(prefix: Path) -> int:
    python_include = sysconfig.get_paths()["include"]
    numpy_include = numpy.get_include()
    changed = 0
    for cmake_file in sorted((prefix / "share").glob("*/cmake/*.cmake")):
        text = cmake_file.read_text()
        new = _BUILDER_NUMPY_INCLUDE.sub(numpy_include, text)
        new = _BUILDER_PYTHON_INCLUDE.sub(python_include, new)
        if new != text:
            cmake_file.write_text(new)
            changed += 1
    return changed


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    prefix = Path(sys.argv[1])
    if not (prefix / "share").is_dir():
        sys.exit(f"{prefix}/share does not exist: is {prefix} a virtual environment with ROS wheels?")
    print(f"[bootstrap] rewrote Python/numpy include paths in {fix(prefix)} CMake files")


if __name__ == "__main__":
    main()
