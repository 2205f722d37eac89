"""Finding the benchmark groups: every public module of a package defining ``GROUP``."""

from __future__ import annotations

import importlib
import pkgutil

from .core import Group

__all__ = ["discover"]


def discover(package: str) -> tuple[list[Group], dict[str, str]]:
    """Import every module of ``package`` not starting with ``_``; collect their ``GROUP``.

    Returns the groups (sorted by ``order``, then name) and, for modules whose
    imports failed (a baseline package is missing), the module name and error.
    """
    root = importlib.import_module(package)
    groups: list[Group] = []
    skipped: dict[str, str] = {}
    for info in pkgutil.iter_modules(root.__path__):
        if info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"{package}.{info.name}")
        except ImportError as exc:
            skipped[info.name] = f"{type(exc).__name__}: {exc}"
            continue
        group = getattr(module, "GROUP", None)
        if not isinstance(group, Group):
            raise TypeError(f"{package}.{info.name} defines no GROUP (a harness.Group)")
        groups.append(group)
    names = [group.name for group in groups]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate group names: {names}")
    groups.sort(key=lambda group: (group.order, group.name))
    return groups, skipped
