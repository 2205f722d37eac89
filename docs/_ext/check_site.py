"""Check a built documentation site: it works offline, and its API reference is complete.

Run by ``nox -s docs`` after ``mkdocs build``::

    python docs/_ext/check_site.py site

Exits 1, listing the problems, if

- a page loads a script or a stylesheet from another host (``<script src="https://...">``,
  ``<link rel="stylesheet" href="https://...">``, a stylesheet's ``@import`` or ``url()``
  of one), or one that is missing from the site;
- no code block was coloured when the site was built (Pygments' token classes);
- a public name (``__all__`` of ``keyedlock``, ``keyedlock.multiprocessing``,
  ``keyedlock.cli`` and, once it exists, ``keyedlock.redis``) is not in the reference's
  inventory (``objects.inv``).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import zlib
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

#: The modules whose ``__all__`` the API reference documents (the optional ones once
#: they exist).
PUBLIC_MODULES = ("keyedlock", "keyedlock.multiprocessing", "keyedlock.cli")
OPTIONAL_MODULES = ("keyedlock.redis",)

_CSS_URL = re.compile(r"""@import\s+(?:url\()?\s*["']?([^"')\s;]+)|url\(\s*["']?([^"')\s]+)""")
#: A Pygments token span (keyword, name, string, ...) in a coloured code block.
_TOKEN = re.compile(r'<span class="(?:k|kn|n|nf|s|s1|s2|c|c1)">')


class _Assets(HTMLParser):
    """The scripts and stylesheets one page loads."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "script" and values.get("src"):
            self.urls.append(values["src"])
        elif tag == "link" and "stylesheet" in values.get("rel", "").split():
            self.urls.append(values.get("href", ""))


def _external(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.scheme or parts.netloc)  # https://host/..., //host/..., data:...


def asset_problems(site: Path) -> list[str]:
    """Scripts and stylesheets loaded from another host, or missing from the site."""
    problems = []
    for page in sorted(site.rglob("*.html")):
        parser = _Assets()
        parser.feed(page.read_text(encoding="utf-8"))
        for url in parser.urls:
            where = page.relative_to(site)
            if _external(url):
                problems.append(f"{where}: loads {url} from another host")
                continue
            path = urlsplit(url).path
            # (404.html links from the site's root: it is served at any depth)
            target = site / path.lstrip("/") if path.startswith("/") else page.parent / path
            if not target.is_file():
                problems.append(f"{where}: loads {url}, which is not in the site")
    for sheet in sorted(site.rglob("*.css")):
        for match in _CSS_URL.finditer(sheet.read_text(encoding="utf-8", errors="replace")):
            url = match[1] or match[2]
            if _external(url) and not url.startswith("data:"):
                problems.append(f"{sheet.relative_to(site)}: loads {url} from another host")
    return problems


def highlight_problems(site: Path) -> list[str]:
    """Empty if some page has code coloured by Pygments when the site was built."""
    for page in site.rglob("*.html"):
        if _TOKEN.search(page.read_text(encoding="utf-8")):
            return []
    return ["no page has code coloured when the site was built (Pygments token classes)"]


def inventory(site: Path) -> set[str]:
    """The names in the site's ``objects.inv`` (Sphinx's inventory, version 2)."""
    data = (site / "objects.inv").read_bytes()
    header_end = 0
    for _ in range(4):  # four comment lines, then zlib
        header_end = data.index(b"\n", header_end) + 1
    text = zlib.decompress(data[header_end:]).decode("utf-8")
    return {line.split(" ", 1)[0] for line in text.splitlines() if line}


def public_names() -> list[tuple[str, object]]:
    """``(module.name, object)`` for every name in the public modules' ``__all__``.

    An optional module is left out while it does not exist; one that exists must
    import (``nox -s docs`` installs its extra).
    """
    names = []
    for module_name in PUBLIC_MODULES + OPTIONAL_MODULES:
        if module_name in OPTIONAL_MODULES and importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        names.extend((f"{module_name}.{name}", getattr(module, name)) for name in module.__all__)
    return names


def reference_problems(site: Path) -> list[str]:
    """Public names that the API reference does not document.

    A name counts as documented under its own path, or under the path where its
    class or function is defined (``keyedlock._errors.X``, which the reference
    records for every object it renders: so one object exported by two modules
    is documented once).
    """
    documented = inventory(site)
    problems = []
    for path, obj in public_names():
        defined = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
        if path not in documented and defined not in documented:
            problems.append(f"the API reference (docs/api.md) does not document {path}")
    return problems


def main(argv: list[str]) -> int:
    site = Path(argv[1] if len(argv) > 1 else "site")
    problems = asset_problems(site) + highlight_problems(site) + reference_problems(site)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"{site}: no script or stylesheet from another host; the reference is complete")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
