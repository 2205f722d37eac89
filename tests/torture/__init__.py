"""Torture tests: processes killed at chosen moments, and bad input at every entry point."""
