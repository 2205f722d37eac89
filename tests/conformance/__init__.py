"""One contract, checked over every runtime (threads, asyncio, trio)."""
