"""Token buckets: one per key (an API key's owner id, a client address), in this process or in Redis.

A bucket holds up to `per_minute` tokens and refills at `per_minute` a minute; each counted event
takes one. So a client may spend a minute's allowance at once, then one every 60 / per_minute s.

Where the counts live (`buckets`): with a Redis broker (`WHATIF_BROKER_URL=redis://...`, the
deployed service) in Redis, so every API replica spends from one bucket and a client gets the
limit once, not once per replica; in single-machine mode (`whatif serve`, an in-memory broker) in
this process's memory (`TokenBuckets`).

Redis's buckets are `RedisTokenBuckets`: a hash per bucket (`whatif:rate:<name>:<key>`: tokens and
the time they were counted at, Redis's own clock, so replicas' clocks do not matter), read and
updated by one Lua script, which Redis runs atomically, and expiring once full again. A Redis that
does not answer (down, restarting, hung: each call is bounded by `REDIS_TIMEOUT_S`) never turns
into a 500 and never lifts the limits: the buckets fall back to this process's own for
`RETRY_REDIS_S`, then try Redis again. During an outage each replica limits on its own, as a
single process does (a client may get up to replicas x the limit); the job route answers 503
anyway while the broker is down.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

log = logging.getLogger(__name__)
# Each call to Redis is made on the event loop (the admission middleware runs before the body is
# read): bounded tightly, so a hung Redis stalls a request this long at most, once per RETRY_REDIS_S.
REDIS_TIMEOUT_S = 0.25
RETRY_REDIS_S = 5.0
KEY_PREFIX = "whatif:rate:"


class TokenBuckets:
    """The buckets in this process's memory, at most `max_keys` of them (the least recently used go)."""

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


# KEYS[1]: the bucket; ARGV: capacity, rate (tokens a second), 1 to take a token or 0 to look.
# -> the seconds until the bucket has a token (0: it has one now), as a string (Lua numbers
# become integers on the way out). The same arithmetic as TokenBuckets, on Redis's clock.
_SCRIPT = """
local capacity, rate, take = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(held[1]) or capacity
local at = tonumber(held[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
if take then
  tokens = tokens - 1
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
  redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate * 1000) + 1000)
end
return tostring(math.max(0, (1 - tokens) / rate))
"""


class RedisLink:
    """One Redis for the buckets of every limit of this process: the client (its connections pooled,
    each call bounded by `REDIS_TIMEOUT_S`), the script, and whether Redis answered lately."""

    def __init__(self, client):
        self.client = client
        self.script = client.register_script(_SCRIPT)
        self.down_until = 0.0  # monotonic time before which Redis is not asked again

    def wait_s(self, bucket: str, capacity: float, rate: float, take: bool) -> float | None:
        """The bucket's wait (taking a token if `take`), or None while Redis does not answer."""
        from redis.exceptions import RedisError

        if time.monotonic() < self.down_until:
            return None
        try:
            wait = self.script(keys=[KEY_PREFIX + bucket], args=[capacity, rate, int(take)])
        except (RedisError, OSError) as exc:
            self.down_until = time.monotonic() + RETRY_REDIS_S
            log.warning(
                "rate limits: Redis does not answer (%s); this process's own buckets for %g s",
                type(exc).__name__,
                RETRY_REDIS_S,
            )
            return None
        return float(wait)


class RedisTokenBuckets:
    """The buckets of one limit (`name`) in Redis, shared by every API replica on it; this process's
    `fallback` while Redis does not answer (see the module's docstring)."""

    def __init__(self, link: RedisLink, name: str, per_minute: float, fallback: TokenBuckets | None = None):
        self.link, self.name = link, name
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.fallback = fallback or TokenBuckets(per_minute)

    def wait_s(self, key: str) -> float:
        """Seconds until `key` has a token again; 0 if it has one now."""
        wait = self.link.wait_s(f"{self.name}:{key}", self.capacity, self.rate, take=False)
        return self.fallback.wait_s(key) if wait is None else wait

    def take(self, key: str) -> None:
        """Spend one of `key`'s tokens, in Redis (and in the fallback, so that an outage starts
        from what this process has seen rather than from full buckets)."""
        self.link.wait_s(f"{self.name}:{key}", self.capacity, self.rate, take=True)
        self.fallback.take(key)


@functools.lru_cache(maxsize=8)
def redis_link(url: str) -> RedisLink:
    """The `RedisLink` of a Redis URL, one per process."""
    import redis

    return RedisLink(redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S))


def buckets(settings, name: str, per_minute: float) -> TokenBuckets | RedisTokenBuckets:
    """The buckets for one limit (`name`): in Redis when the service runs on a Redis broker (not in
    single-machine mode), else in this process."""
    if settings.single_machine or not settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
        return TokenBuckets(per_minute)
    return RedisTokenBuckets(redis_link(settings.broker_url), name, per_minute)
