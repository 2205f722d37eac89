"""The package's one logger, ``keyedlock``: what the library reports goes there.

It logs warnings only, for what needs an operator's eye (a hold kept past ``warn_after``, a
holder gone while others wait, a lost lease, callers aborted by ``on_error="stop"``, a
manager client that misbehaves). Configure it as any logger: ``logging.getLogger("keyedlock")``.
"""

from __future__ import annotations

import logging
from typing import Final

__all__ = ["logger"]

#: The library's logger. Silent unless the application configures logging.
logger: Final = logging.getLogger("keyedlock")
logger.addHandler(logging.NullHandler())
