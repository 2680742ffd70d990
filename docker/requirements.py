"""Print the project's runtime dependencies from pyproject.toml, one per line.

Used by the Dockerfiles to install the dependencies in a layer of their own, before the
source is copied (a source change then reuses the cached dependency layer), and by the
GPU image to leave out TensorFlow's CPU build (``--without-tensorflow``): that image
installs ``tensorflow[and-cuda]`` instead. Markers stay as written; pip evaluates them.

    python docker/requirements.py [--without-tensorflow] [pyproject.toml]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (the project's oldest): tomli, which mypy brings into the dev environment
    import tomli as tomllib

#: Distributions that ship the ``tensorflow`` package (CPU or CUDA build): two of them
#: in one environment overwrite each other's files.
TENSORFLOW_DISTRIBUTIONS = {"tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel"}


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement string."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def dependencies(pyproject: Path, *, without_tensorflow: bool = False) -> list[str]:
    with pyproject.open("rb") as fh:
        deps: list[str] = tomllib.load(fh)["project"]["dependencies"]
    if without_tensorflow:
        deps = [d for d in deps if requirement_name(d) not in TENSORFLOW_DISTRIBUTIONS]
    return deps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", nargs="?", default="pyproject.toml", type=Path)
    parser.add_argument(
        "--without-tensorflow",
        action="store_true",
        help="leave out every TensorFlow distribution (the GPU image installs its own)",
    )
    args = parser.parse_args(argv)
    sys.stdout.write(
        "".join(f"{d}\n" for d in dependencies(args.pyproject, without_tensorflow=args.without_tensorflow))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
