"""The package's metadata holds outside the repository (on an index page, say)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]

DOCS_SITE = "https://keyedlock.readthedocs.io"
REPOSITORY = "https://github.com/keyedlock/keyedlock"


def test_license_file_and_metadata_agree() -> None:
    assert PROJECT["license"] == "MIT"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 keyedlock contributors\n" in text
    assert PROJECT["authors"] == [{"name": "keyedlock contributors"}]


def test_project_urls_are_the_projects_addresses() -> None:
    urls = PROJECT["urls"]
    assert {"Homepage", "Documentation", "Source", "Issues"} <= set(urls)
    for name, url in urls.items():
        assert url.startswith((REPOSITORY, DOCS_SITE)), (name, url)
