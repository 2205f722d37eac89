"""Runtime adapters: how a waiter of each runtime parks and is woken.

Each adapter only parks the calling thread or task until the core calls the
``wake`` callable it registered, and withdraws the waiter from the core when
the wait ends otherwise (timeout, cancellation). The trio adapter is imported
only by callers that run under trio.
"""
