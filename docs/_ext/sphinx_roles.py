"""Griffe extension: render the library's reST-flavoured docstrings as Markdown.

The docstrings are written for ``help()`` and use reST cross-reference roles
(``:class:`~keyedlock.LockTimeout```) and ``::`` literal-block markers. For
the API reference, this extension rewrites them when the docs are built:

- a role targeting ``keyedlock.*`` becomes a cross-reference to that object
  (optional: if the object is not documented it is shown as plain code);
- a role targeting anything else becomes inline code;
- a paragraph ending in ``::`` ends in ``:`` (the indented block after it is
  already a Markdown code block).

The source docstrings are not changed.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_ROLE = re.compile(
    r":(?:py:)?(?:class|meth|func|exc|attr|data|obj|mod):`(?P<tilde>~?)(?P<target>[^`]+)`"
)
_LITERAL_MARKER = re.compile(r"::$", flags=re.MULTILINE)


def _role(match: re.Match[str]) -> str:
    target = match["target"].strip()
    shown = target.rsplit(".", 1)[-1] if match["tilde"] else target
    if target.endswith("()"):
        target = target[:-2]
    if target.startswith("keyedlock."):
        return f'<autoref optional identifier="{target}"><code>{shown}</code></autoref>'
    return f"`{shown}`"


def convert(text: str) -> str:
    """Rewrite the reST constructs of one docstring as Markdown."""
    return _LITERAL_MARKER.sub(":", _ROLE.sub(_role, text))


class SphinxRoles(Extension):
    """Convert reST roles and literal markers in every docstring to Markdown."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
