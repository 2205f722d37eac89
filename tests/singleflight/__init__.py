"""Single-flight: concurrent callers of one key share one call, over every runtime."""
