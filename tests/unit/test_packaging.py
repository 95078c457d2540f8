"""The distribution lists every package of the source tree (pyproject lists them by hand, since
migrations/ ships as server.migrations), so a non-editable install is never missing a module.
tests/e2e/test_install.py installs it for real."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _packages(name: str, directory: Path) -> set[str]:
    """`name` and its subpackages: the directories under `directory` that hold Python files."""
    return {
        ".".join([name, *d.relative_to(directory).parts])
        for d in [directory, *directory.rglob("*")]
        if d.is_dir() and "__pycache__" not in d.parts and any(d.glob("*.py"))
    }


def test_pyproject_lists_every_package_of_the_source_tree() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {"server": "server", "worker_sdk": "worker_sdk", **setuptools["package-dir"]}
    found = set()
    for name, directory in roots.items():
        if name:  # "" maps the repository's root: its packages are listed above
            found |= _packages(name, REPO / directory)
    listed = set(setuptools["packages"])
    assert not found - listed, f"missing from pyproject's packages: {sorted(found - listed)}"
    assert not listed - found, f"not in the source tree: {sorted(listed - found)}"
