"""The keyedlock test suite."""
