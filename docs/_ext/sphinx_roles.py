"""Griffe extension: render the library's reST-flavoured docstrings as Markdown.

The docstrings are written for ``help()`` and use reST cross-reference roles
(``:class:`~keyedlock.LockTimeout```) and ``::`` literal-block markers. For
the API reference, this extension rewrites them when the docs are built:

- a role targeting ``keyedlock.*``, or a name that resolves there from the
  docstring's own scope (``:meth:`release``` in a method of ``KeyedLock``,
  ``:class:`KeyedLockManager``` in ``keyedlock.multiprocessing``), becomes a
  cross-reference to that object (optional: if the object is not documented
  it is shown as plain code);
- a role targeting anything else becomes inline code;
- a paragraph ending in ``::`` ends in ``:``, and the indented block after
  it becomes a fenced ``python`` block (so that it is coloured like the
  examples of the other pages; a ``::`` alone on its line is dropped).

The source docstrings are not changed.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, NameResolutionError, Object

_ROLE = re.compile(
    r":(?:py:)?(?:class|meth|func|exc|attr|data|obj|mod):`(?P<tilde>~?)(?P<target>[^`]+)`"
)
_LITERAL_MARKER = re.compile(r"::$")


def _resolve(target: str, scope: Object | None) -> str:
    """The full path of ``target`` as the docstring of ``scope`` sees it (else ``target``)."""
    if scope is None or target.startswith("keyedlock."):
        return target
    first, dot, rest = target.partition(".")
    try:
        full = scope.resolve(first)
    except NameResolutionError:
        return target
    return full + dot + rest


def _role(match: re.Match[str], scope: Object | None = None) -> str:
    target = match["target"].strip()
    shown = target.rsplit(".", 1)[-1] if match["tilde"] else target
    if target.endswith("()"):
        target = target[:-2]
    target = _resolve(target, scope)
    if target.startswith("keyedlock."):
        return f'<autoref optional identifier="{target}"><code>{shown}</code></autoref>'
    return f"`{shown}`"


def _literal_blocks(text: str) -> str:
    """Turn each ``::`` paragraph end and the indented block after it into a fenced block."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not _LITERAL_MARKER.search(line):
            out.append(line)
            continue
        if line.strip() != "::":
            out.append(line[:-1])  # "...::" ends in ":"
        # The block: blank lines, then lines indented past the paragraph's.
        margin = len(line) - len(line.lstrip())
        start = i
        while i < len(lines) and not lines[i].strip():
            i += 1
        end = i
        while end < len(lines) and (
            not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > margin
        ):
            end += 1
        while end > i and not lines[end - 1].strip():
            end -= 1
        block = lines[i:end]
        if not block:  # a marker with no block after it
            i = start
            continue
        indent = min(len(b) - len(b.lstrip()) for b in block if b.strip())
        out += ["", " " * margin + "```python"]
        out += [" " * margin + b[indent:] if b.strip() else "" for b in block]
        out += [" " * margin + "```"]
        i = end
    return "\n".join(out)


def convert(text: str, scope: Object | None = None) -> str:
    """Rewrite the reST constructs of one docstring (of ``scope``, if given) as Markdown."""
    text = _ROLE.sub(lambda match: _role(match, scope), text)
    return _literal_blocks(text)


class SphinxRoles(Extension):
    """Convert reST roles and literal markers in every docstring to Markdown."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value, obj)
