"""Fixtures of the host-scope tests.

- ``lock_path``: a fresh lock file path for one test.
- ``file_lock``: a :class:`~keyedlock.FileKeyedLock` on it that must hold nothing at the end.
- ``children``: agents (``python -c`` processes) and multiprocessing children, killed and
  reaped at teardown even when the test fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keyedlock import FileKeyedLock

from .file_support import Children


@pytest.fixture
def lock_path(tmp_path: Path) -> str:
    return str(tmp_path / "keys.lock")


@pytest.fixture
def file_lock(lock_path: str) -> Iterator[FileKeyedLock]:
    lock = FileKeyedLock(lock_path)
    yield lock
    assert len(lock) == 0, f"keys left behind: {lock!r}"


@pytest.fixture
def children() -> Iterator[Children]:
    started = Children()
    try:
        yield started
    finally:
        started.reap()
