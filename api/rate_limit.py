"""Token buckets in this process's memory: one per key (an API key's owner id, a client address).

A bucket holds up to `per_minute` tokens and refills at `per_minute` a minute; each counted event
takes one. So a client may spend a minute's allowance at once, then one every 60 / per_minute s.

In memory, so each API process counts on its own: with several replicas (deploy/k8s runs two)
a client gets up to replicas x the limit. A shared store (Redis, which the service already runs)
would be needed for one limit across replicas; this is enough for one API process.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class TokenBuckets:
    def __init__(self, per_minute: float, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens a second
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._lock = threading.Lock()

    def _tokens(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.capacity, now))
        return min(self.capacity, tokens + (now - at) * self.rate)

    def wait_s(self, key: str) -> float:
        """Seconds until `key` has a token again; 0 if it has one now."""
        with self._lock:
            missing = 1.0 - self._tokens(key, self.clock())
        return max(0.0, missing / self.rate)

    def take(self, key: str) -> None:
        """Spend one of `key`'s tokens (it may go below zero: the wait grows)."""
        with self._lock:
            now = self.clock()
            self._buckets[key] = (self._tokens(key, now) - 1.0, now)
            self._buckets.move_to_end(key)
            # Bounded memory whatever the number of addresses: forget the least recently used.
            # A forgotten key starts full again, which only errs towards letting it through.
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
