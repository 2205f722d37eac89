"""Import hygiene: trio is imported only under trio; the core never imports a runtime."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import keyedlock

from .support import run_python

PACKAGE_DIR = Path(keyedlock.__file__).resolve().parent
CORE_FILES = sorted((PACKAGE_DIR / "_core").glob("*.py"))

#: What the core must not import: event loops, runtime detection and the runtime adapters.
FORBIDDEN_IN_CORE = (
    "asyncio",
    "trio",
    "anyio",
    "sniffio",
    "keyedlock._runtime",
    "keyedlock._scopes",
    "keyedlock._lock",
    "keyedlock._filelock",
    "keyedlock._singleflight",
    "keyedlock.multiprocessing",
)


def test_importing_keyedlock_does_not_import_trio() -> None:
    run_python(
        """
        import sys
        import keyedlock
        assert "trio" not in sys.modules, "keyedlock imported trio"
        """
    )


def test_using_threads_and_asyncio_does_not_import_trio() -> None:
    run_python(
        """
        import asyncio, sys, threading
        from keyedlock import KeyedLock, flight

        lock = KeyedLock()

        async def main():
            async with lock("k"):
                pass
            assert await lock.acquire_async("k")
            waiter = asyncio.create_task(lock.run("k", asyncio.sleep, 0))
            while lock.waiters("k") == 0:
                await asyncio.sleep(0)
            lock.release("k")
            await waiter

        with lock("k"):
            pass
        thread = threading.Thread(target=lambda: lock.run_sync("k", print, end=""))
        thread.start()
        thread.join(30)
        asyncio.run(main())
        assert len(lock) == 0
        assert "trio" not in sys.modules, "keyedlock imported trio"
        """
    )


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports (anywhere in it), relative imports resolved."""
    package = "keyedlock." + path.parent.relative_to(PACKAGE_DIR).as_posix().replace("/", ".")
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
                names.add(module)
                names.update(f"{module}.{alias.name}" for alias in node.names)
            else:
                assert node.module is not None
                names.add(node.module)
    return names


def test_the_import_scan_sees_relative_imports() -> None:
    hold = PACKAGE_DIR / "_core" / "_hold.py"  # (from .._errors import QueueFull)
    assert "keyedlock._errors" in imported_modules(hold)


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda path: path.name)
def test_the_core_imports_no_runtime(path: Path) -> None:
    imported = imported_modules(path)
    bad = sorted(
        name
        for name in imported
        if any(name == banned or name.startswith(banned + ".") for banned in FORBIDDEN_IN_CORE)
    )
    assert bad == [], f"{path.name} imports {bad}"


def test_the_core_is_there() -> None:
    assert {path.name for path in CORE_FILES} >= {"__init__.py", "_keytable.py"}


def test_only_the_trio_adapter_imports_trio_at_module_level() -> None:
    offenders = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:  # module level only: imports inside functions are lazy
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            if any(name == "trio" or name.startswith("trio.") for name in names):
                offenders.append(path.relative_to(PACKAGE_DIR).as_posix())
    assert set(offenders) <= {"_runtime/_trio.py"}, offenders
