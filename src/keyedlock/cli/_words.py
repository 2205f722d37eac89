"""Text as the command line prints it, so that it can be pasted back into a shell."""

from __future__ import annotations

import shlex

__all__ = ["shell_word", "shown"]


def shown(text: str) -> str:
    """``text`` as printed: as it is or, with a line break, another unprintable character,
    or bytes that are not UTF-8, in the ``$'...'`` form of bash and zsh, which gives the
    same bytes back (a byte that is not UTF-8 is ``\\xHH``)."""
    if text.isprintable():
        return text
    escaped = "".join(_escaped(char) for char in text)
    return f"$'{escaped}'"


def _escaped(char: str) -> str:
    if 0xDC80 <= ord(char) <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{ord(char) - 0xDC00:02x}"
    if char in "'\\":
        return "\\" + char
    if char.isprintable():
        return char
    return char.encode("unicode_escape").decode("ascii")


def shell_word(text: str) -> str:
    """``text`` as one word of a shell command line that gives it back: quoted if it needs
    to be, in the ``$'...'`` form (see :func:`shown`) if it is not printable."""
    return shlex.quote(text) if text.isprintable() else shown(text)
