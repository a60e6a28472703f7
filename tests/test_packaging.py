"""What ``pip install maildesk`` ships: every package of the source tree and every file its
code reads, so the installed command works as the checkout does (the tests themselves run
on an editable install, which would hide a package the wheel leaves out)."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _source_packages() -> set[str]:
    return {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "maildesk").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }


def test_the_wheel_lists_every_package_of_the_source_tree() -> None:
    listed = set(_setuptools()["packages"])
    assert _source_packages() - listed == set(), "packages the wheel would leave out"
    mapped = set(_setuptools().get("package-dir", {}))
    assert listed - _source_packages() - mapped == set(), "packages listed that do not exist"


def test_the_wheel_ships_every_data_file_beside_the_code() -> None:
    data = _setuptools()["package-data"]
    missing = []
    for path in (ROOT / "maildesk").rglob("*"):
        if path.is_dir() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
            continue
        package = ".".join(path.parent.relative_to(ROOT).parts)
        if not any(fnmatch.fnmatch(path.name, glob) for glob in data.get(package, [])):
            missing.append(str(path.relative_to(ROOT)))
    assert missing == []
