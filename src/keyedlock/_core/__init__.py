"""Runtime-free state machines: nothing here parks or wakes a caller itself.

The core never imports asyncio, trio or a runtime adapter (a test checks it).
"""
