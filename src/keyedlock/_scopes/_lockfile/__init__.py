"""The lock-file scope: keyed locks shared by every process of one Linux host.

- :mod:`._keys`: a key's byte in the lock file, and its lock requests;
- :mod:`._paths`: where the lock file is, and how it is opened safely;
- :mod:`._scope`: :class:`FileScope`, the wide scope over the kernel's locks;
- :mod:`._filebackend`: :class:`FileBackend`, the lock backend, with its fast path.
"""

from __future__ import annotations

from ._filebackend import FileBackend, FileContext
from ._kernelwait import WAIT_THREAD
from ._keys import KeyOffset, key_offset, offset_of
from ._paths import default_path
from ._scope import DEFAULT_MAX_THREADS, FileScope, not_held_error

__all__ = [
    "DEFAULT_MAX_THREADS",
    "WAIT_THREAD",
    "FileBackend",
    "FileContext",
    "FileScope",
    "KeyOffset",
    "default_path",
    "key_offset",
    "not_held_error",
    "offset_of",
]
