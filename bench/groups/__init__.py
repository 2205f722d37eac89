"""Benchmark groups: each public module here defines ``GROUP`` (a ``harness.Group``).

To add a group, add a module ``name.py`` with ``GROUP = Group(name="name", ...)``
listing its scenarios; ``bench/run.py`` finds it by itself. Modules whose
names start with ``_`` hold shared baselines and are not groups.
"""
