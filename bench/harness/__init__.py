"""The benchmark harness: the model (groups, scenarios, cases), discovery and reporting.

A benchmark group is a module of ``bench/groups/`` that defines ``GROUP``, a
:class:`Group`; ``bench/run.py`` finds, runs and reports every group.
"""

from __future__ import annotations

from .core import (
    Bar,
    Case,
    Check,
    Group,
    Ratio,
    Scenario,
    ScenarioResult,
    Settings,
    Table,
    TimedScenario,
    format_ns,
    format_rate,
    format_ratio,
)
from .discovery import discover

__all__ = [
    "Bar",
    "Case",
    "Check",
    "Group",
    "Ratio",
    "Scenario",
    "ScenarioResult",
    "Settings",
    "Table",
    "TimedScenario",
    "discover",
    "format_ns",
    "format_rate",
    "format_ratio",
]
