"""What the command line needs to know about the file scope's lock file.

The one place that reaches into the library's private modules: where
``FileKeyedLock()`` keeps its lock file, and which byte of it a key is.
"""

from __future__ import annotations

from keyedlock._scopes import default_path, key_offset

__all__ = ["default_path", "key_offset"]
