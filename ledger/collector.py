"""Python's cyclic garbage collector, set for a long-running service.

By default the collector runs a young collection every 700 allocations and, now and then, walks
every object the process holds. A service that decodes thousands of events a second (webhooks,
batches of the log, states) allocates millions of short-lived objects that reference counting
frees anyway; measured under `bench/ingest.py`, the default settings cost the process a sixth of
its webhooks per second and doubled the p99. So, once the modules and the app are loaded:

* what exists then is frozen (never walked again: it lives as long as the process);
* a young collection runs every 50,000 allocations, an older one every 50 of those, a full one
  every 100 older ones (and, as always, only when enough new long-lived objects have piled up).

Cycles (asyncio's futures and exceptions make some) are still collected, a little later.
"""

from __future__ import annotations

import gc

__all__ = ["for_a_service"]

THRESHOLDS = (50_000, 50, 100)


def for_a_service() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
