"""The cluster scope: keyed locks and single-flight shared through Redis or Valkey.

So far this holds the server side only: the Lua scripts of a fair, fenced, leased lock and a
sketch of cross-host single-flight (:mod:`._scripts`, where the key layout, the wake-up
mechanism and the token handling are described). The client side plugs in later.

Nothing here imports a client library: ``import keyedlock`` never imports ``redis``.
"""
