"""Tests of the runtime-free state machines, driven directly without threads."""
