"""Scope backends: where lock state lives (this process, this host, ...)."""
