"""State one per instance when `server.workers > 1`: a shared-memory zone.

`zone.py` is the zone (a memfd the supervisor creates and its workers map),
its tables of slots and their locks; `limits.py` keeps the local rate limits
there and `resilience.py` the circuit breakers and passive ejection. The
algorithms stay pure: these modules only load and store their state under a
lock. docs/architecture.md says which state lives where.
"""
