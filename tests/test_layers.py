"""The layers of the package stay visible and enclosed (see docs/design.md).

- A package (``_core``, ``_runtime``, ``_scopes`` and the scope packages inside it) is entered
  from outside only through an ``__init__``: the package-internal API it declares (its own, or
  a sub-package's), never a module of it directly.
- No name with a leading underscore is imported from another keyedlock module.
- The core's table internals (``_holds``, ``_guard``, ``_lost``) are read and written in the
  core only; everything else uses the table's methods.
- No two modules share a name at two levels, and modules stay small (split by concern).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import keyedlock

PACKAGE_DIR = Path(keyedlock.__file__).resolve().parent
MODULES = sorted(PACKAGE_DIR.rglob("*.py"))

#: Table internals no module outside the core may touch.
TABLE_INTERNALS = {"_holds", "_guard", "_lost"}

#: A module longer than this is doing more than one thing.
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def packages_of(name: str) -> list[str]:
    """The packages ``name`` lives in, innermost first (``keyedlock`` itself excluded)."""
    parts = name.split(".")
    found = []
    for end in range(len(parts), 1, -1):
        candidate = ".".join(parts[:end])
        directory = PACKAGE_DIR.parent.joinpath(*candidate.split("."))
        if directory.is_dir():
            found.append(candidate)
    return found


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module, imported names) of every keyedlock import in ``path``."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "keyedlock" or target.startswith("keyedlock."):
                found.append((target, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend(
                (alias.name, []) for alias in node.names if alias.name.startswith("keyedlock.")
            )
    return found


def is_package(name: str) -> bool:
    return PACKAGE_DIR.parent.joinpath(*name.split(".")).is_dir()


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_packages_are_entered_through_their_api(path: Path) -> None:
    here = module_name(path)
    mine = set(packages_of(here))
    bad = []
    for target, names in imports(path):
        outside = [p for p in packages_of(target) if p not in mine]
        if outside and not is_package(target):
            bad.append(target)  # a module of a package this one is not in
            continue
        if target in mine or not outside:
            continue
        # ``from keyedlock._scopes import _manager`` names a module of the package: as bad.
        bad.extend(
            f"{target}.{name}"
            for name in names
            if is_package(f"{target}.{name}")
            or PACKAGE_DIR.parent.joinpath(*target.split("."), name + ".py").exists()
        )
    assert bad == [], f"{here} reaches past a package's API: {bad}"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_no_private_name_crosses_a_module(path: Path) -> None:
    bad = [
        f"{target}.{name}"
        for target, names in imports(path)
        for name in names
        if name.startswith("_") and name not in ("__version__",)
    ]
    assert bad == [], f"{module_name(path)} imports private names: {bad}"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_table_internals_stay_in_the_core(path: Path) -> None:
    if module_name(path).startswith("keyedlock._core"):
        return
    tree = ast.parse(path.read_text(), str(path))
    bad = sorted(
        {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr in TABLE_INTERNALS
        }
    )
    assert bad == [], f"{module_name(path)} touches the table's internals: {bad}"


def test_no_module_name_at_two_levels() -> None:
    """A name is used at one depth only: ``_file.py`` next to ``_scopes/_file.py`` hides
    which is which, while parallel packages (each scope's ``_lockbackend.py``) may share
    their modules' names."""
    depths: dict[str, set[int]] = {}
    for path in MODULES:
        if path.name not in ("__init__.py", "__main__.py"):
            depths.setdefault(path.name, set()).add(len(path.relative_to(PACKAGE_DIR).parts))
    assert [name for name, found in depths.items() if len(found) > 1] == []


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{module_name(path)} has {lines} lines: split it by concern"
