"""Development tasks: `nox` runs lint, typecheck and tests; `nox -s NAME` runs one.

Sessions use the interpreter nox runs on (no version pinning), so a machine
with a single Python 3.11+ is enough:

    pip install nox
    nox                     # lint, typecheck, tests
    nox -s tests -- -k fifo # extra arguments go to pytest
    nox -s tests-versions   # the tests on every supported Python installed here
    nox -s tests-redis-oldest  # the cluster scope's tests with the oldest redis-py supported
    nox -s stress           # long stress tests (marked slow)
    nox -s docs             # build the documentation site (strict)
    nox -s bench -- --help  # benchmarks
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.error_on_external_run = True

#: The ruff series whose rules and formatting style the code base follows.
RUFF = "ruff>=0.17,<0.18"


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (the slow stress tests are left out unless pytest args are given)."""
    session.install(".[test]")
    args = session.posargs or ["-m", "not slow"]
    session.run("pytest", *args)


@nox.session(name="tests-versions", python=["3.11", "3.12", "3.13", "3.14"])
def tests_versions(session: nox.Session) -> None:
    """The test suite on every supported Python found on this machine (others are skipped)."""
    session.install(".[test]")
    session.run("pytest", *(session.posargs or ["-m", "not slow"]))


#: The oldest redis-py the cluster scope supports (pyproject: redis>=5.0).
REDIS_OLDEST = "redis==5.0.8"


@nox.session(name="tests-redis-oldest")
def tests_redis_oldest(session: nox.Session) -> None:
    """The cluster scope's tests with the oldest redis-py it supports."""
    session.install(".[test]", REDIS_OLDEST)
    session.run(
        "pytest", *(session.posargs or ["-m", "not slow", "tests/cluster", "-k", "not docs"])
    )


@nox.session
def stress(session: nox.Session) -> None:
    """Run the long stress tests; they print their seed and counts."""
    session.install(".[test]")
    session.run(
        "pytest",
        "-m",
        "slow",
        "-p",
        "no:cacheprovider",
        "--timeout=1800",
        "-s",
        *session.posargs,
        env={"KEYEDLOCK_STRESS": "long"},
    )


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the library, the tests, the documentation examples and the benchmarks."""
    session.install(".[test]", "mypy", "-r", "bench/requirements.txt")
    session.run("mypy", "--strict", "src", "tests", "docs/examples", *session.posargs)
    session.run("mypy", "--strict", "bench", env={"MYPYPATH": "bench"})


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint rules and formatting check."""
    session.install(RUFF)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site into site/ (any warning is an error), then check it.

    The check: the site loads no script or stylesheet from another host (it works
    offline), its code is coloured, and the API reference documents every public name.
    """
    session.install(".[docs,redis]")  # (redis: the check imports every public module)
    session.run("mkdocs", "build", "--strict", *session.posargs)
    session.run("python", "docs/_ext/check_site.py", _site_dir(session.posargs))


def _site_dir(args: list[str]) -> str:
    """The directory `mkdocs build ARGS` builds into."""
    site = "site"
    for i, arg in enumerate(args):
        if arg in ("-d", "--site-dir") and i + 1 < len(args):
            site = args[i + 1]
        elif arg.startswith("--site-dir="):
            site = arg.partition("=")[2]
    return site


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks (arguments go to bench/run.py)."""
    session.install(".[trio]", "-r", "bench/requirements.txt")
    session.run("python", "bench/run.py", *session.posargs)
