"""Scopes wider than one process: the host file lock and the multiprocessing manager."""
