"""The package's metadata and README hold outside the repository (on an index page, say)."""

from __future__ import annotations

import re
import tomllib
import unicodedata
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
PROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]

DOCS_SITE = "https://keyedlock.readthedocs.io"
REPOSITORY = "https://github.com/keyedlock/keyedlock"

_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
_DOCS_PAGE = re.compile(
    re.escape(DOCS_SITE) + r"/en/latest/(?:(?P<page>[\w-]+)/)?(?:#(?P<anchor>.*))?"
)
_REPOSITORY_PATH = re.compile(re.escape(REPOSITORY) + r"/(?:tree|blob)/main/(?P<path>.+)")


def readme_links() -> list[str]:
    text = _CODE_SPAN.sub("", _FENCE.sub("", README))
    return _LINK.findall(text)


def _slug(heading: str) -> str:
    """The anchor mkdocs gives a heading (Python-Markdown's toc slugify)."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(m[1]) for m in re.finditer(r"^#+\s+(.*)$", text, re.MULTILINE)}


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


def test_the_docs_site_is_built_from_the_repository() -> None:
    """The site the README links to builds from a file of the repository: mkdocs, strict,
    with the extras the docs session installs."""
    config = (ROOT / ".readthedocs.yaml").read_text(encoding="utf-8")
    assert re.search(r"^version: 2$", config, re.MULTILINE)
    assert re.search(
        r"^mkdocs:\n  configuration: mkdocs.yml\n  fail_on_warning: true$", config, re.MULTILINE
    )
    extras = re.findall(r"^        - (\w+)$", config, re.MULTILINE)
    assert extras == ["docs", "redis"]
    assert set(extras) <= set(PROJECT["optional-dependencies"])
    assert (ROOT / "mkdocs.yml").is_file()


def test_readme_keeps_its_first_two_commands() -> None:
    blocks = re.findall(r"^```bash\n(.*?)^```", README, re.MULTILINE | re.DOTALL)
    assert blocks[:2] == [
        'pip install ".[trio]" && python -m keyedlock demo\n',
        "pip install nox && nox -s tests\n",
    ]


def test_readme_links_are_absolute() -> None:
    """A relative link (docs/cli.md, #section) breaks where the README is shown alone."""
    links = readme_links()
    assert links
    relative = [link for link in links if not link.startswith("https://")]
    assert not relative, f"README links that only work inside the repository: {relative}"


@pytest.mark.parametrize("link", [link for link in readme_links() if link.startswith(DOCS_SITE)])
def test_readme_links_to_the_docs_name_a_page_and_heading(link: str) -> None:
    if link.rstrip("/") == DOCS_SITE:
        return
    match = _DOCS_PAGE.fullmatch(link)
    assert match, f"{link}: not {DOCS_SITE}/en/latest/PAGE/"
    page = ROOT / "docs" / f"{match['page'] or 'index'}.md"
    assert page.is_file(), f"{link}: no {page.relative_to(ROOT)}"
    if match["anchor"]:
        assert match["anchor"] in _anchors(page), f"{link}: no such heading"


@pytest.mark.parametrize("link", [link for link in readme_links() if link.startswith(REPOSITORY)])
def test_readme_links_to_the_repository_name_a_path(link: str) -> None:
    match = _REPOSITORY_PATH.fullmatch(link)
    assert match, f"{link}: not {REPOSITORY}/tree/main/PATH"
    assert (ROOT / match["path"]).exists(), f"{link}: no {match['path']}"
