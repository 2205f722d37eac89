"""Every example the documentation shows runs and succeeds (they assert what they claim)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster.servers import Server, find_server_binary

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "docs" / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.py"))
TIMEOUT = 60


def test_examples_exist() -> None:
    assert EXAMPLES, f"no examples found in {EXAMPLES_DIR}"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A server of the module's own, for the examples of the cluster scope (``redis_*.py``):
    they read ``REDIS_URL``."""
    binary = find_server_binary()
    if binary is None:
        pytest.skip("no redis-server or valkey-server binary for the cluster-scope examples")
    server = Server(binary)
    try:
        server.start()
        yield server.url + "/0"
    finally:
        server.close()


@pytest.mark.timeout(TIMEOUT + 10)
@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(example: Path, request: pytest.FixtureRequest) -> None:
    env = dict(os.environ)
    if example.name.startswith("redis_"):
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    proc = subprocess.run(
        [sys.executable, str(example)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=example.parent,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, (
        f"{example.name} exited with {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )


@pytest.mark.timeout(TIMEOUT + 10)
def test_readme_demo_command() -> None:
    """`python -m keyedlock demo`, the README's first command, succeeds and shows the race."""
    proc = subprocess.run(
        [sys.executable, "-m", "keyedlock", "demo"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = _demo_rows(proc.stdout)
    runtimes = ["threads", "asyncio"]
    if sys.platform.startswith("linux"):  # FileKeyedLock: Linux only, else the row is skipped
        runtimes.append("processes")
    for runtime in runtimes:
        # (charges, balance, expected balance, correct?)
        assert rows.get((runtime, "none"), (0, 0, 0, ""))[3] == "NO", (runtime, proc.stdout)
        assert rows.get((runtime, "keyedlock")) == (3, 10, 10, "yes"), (runtime, proc.stdout)


def _demo_rows(stdout: str) -> dict[tuple[str, str], tuple[int, int, int, str]]:
    """The demo's table: (runtime, lock) -> (charges, balance, expected balance, correct?)."""
    rows: dict[tuple[str, str], tuple[int, int, int, str]] = {}
    for line in stdout.splitlines():
        words = line.split()
        # runtime (may be two words), lock, charges, balance, expected, correct?, time, "ms"
        if len(words) < 8 or words[-1] != "ms" or not words[-6].isdigit():
            continue
        runtime = " ".join(words[:-7])
        charges, balance, expected = (int(w) for w in words[-6:-3])
        rows[runtime, words[-7]] = (charges, balance, expected, words[-3])
    return rows


def _readme_programs() -> list[str]:
    """The README's Python blocks that are whole programs (they start their event loop)."""
    readme = (EXAMPLES_DIR.parent.parent / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
    return [block for block in blocks if re.search(r"^(trio|asyncio)\.run\(", block, re.MULTILINE)]


def test_readme_has_a_whole_program() -> None:
    assert _readme_programs(), "the README shows no block that runs as it is"


@pytest.mark.timeout(TIMEOUT + 10)
@pytest.mark.parametrize("program", _readme_programs())
def test_readme_program_runs(program: str, tmp_path: Path) -> None:
    """A README block shown as a whole program runs as copied (the others are fragments: the
    README says so)."""
    script = tmp_path / "readme_block.py"
    script.write_text(program, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
