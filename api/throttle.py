"""Failed credentials, limited per client address: wrong API tokens on ``/v1`` and failed console
sign-ins.

An address may fail ``limit`` times within ``window`` seconds; after that every request from it
that would check a credential is refused with ``429`` and ``Retry-After`` (the seconds until its
oldest failure leaves the window) *without* checking it, so guessing stops paying: the right token
sent in the middle of a guessing run is refused like the others. Requests that present a valid
credential from an address in good standing are never counted, delayed or refused. Kept in the
process's memory (each ``serve`` process limits on its own), for at most ``max_addresses``
addresses (the least recently failing are forgotten first).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from ledger.errors import TooManyFailures

__all__ = ["FailureLimiter"]


class FailureLimiter:
    def __init__(
        self,
        limit: int,
        window: float,
        *,
        max_addresses: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str) -> deque[float] | None:
        failures = self._failures.get(address)
        if failures is None:
            return None
        horizon = self._clock() - self.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures

    def check(self, address: str) -> None:
        """Raises ``TooManyFailures`` while ``address`` has used up its failures."""
        if self.limit <= 0:
            return
        failures = self._recent(address)
        if failures is not None and len(failures) >= self.limit:
            wait = failures[0] + self.window - self._clock()
            raise TooManyFailures(
                f"too many failed attempts from {address}; try again in {math.ceil(wait)} s",
                retry_after=max(1, math.ceil(wait)),
            )

    def failed(self, address: str) -> None:
        """Counts one failure of ``address``."""
        if self.limit <= 0:
            return
        failures = self._recent(address)
        if failures is None:
            failures = self._failures[address] = deque(maxlen=self.limit)
        failures.append(self._clock())
        self._failures.move_to_end(address)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)
