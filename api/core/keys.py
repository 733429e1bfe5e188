"""The rule an API key must meet to be accepted at start-up.

A key is refused when it

- is shorter than `MIN_LENGTH` (16) characters,
- holds anything but printable ASCII without spaces (a header value keeps nothing else intact,
  and a key of blanks is no secret), or
- has an estimated entropy below `MIN_BITS` (64 bits): its length times the Shannon entropy of
  its own character frequencies, in bits a character; a key that repeats a shorter string is
  measured on one repetition ("changeme" * 4 as "changeme": 22 bits).

The estimate cannot see a dictionary word or a keyboard walk; it refuses repetition ("a" * 32: 0
bits) and few distinct characters. A random key passes with room to spare: 32 hex characters
(`openssl rand -hex 16`) estimate about 110 bits, `secrets.token_urlsafe(32)` about 210. It may
refuse a random key of only 16 characters (at most 64 bits by this estimate); use longer ones.
"""

from __future__ import annotations

import math
from collections import Counter

MIN_LENGTH = 16
MIN_BITS = 64.0
HOW_TO_MAKE_ONE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def entropy_bits(key: str) -> float:
    """Length x the Shannon entropy of the key's character frequencies, on one period of a
    key that repeats a shorter string."""
    key = key[: _period(key)]
    n = len(key)
    if not n:
        return 0.0
    return max(0.0, -sum(c * math.log2(c / n) for c in Counter(key).values()))


def _period(key: str) -> int:
    """The shortest p with key[i] == key[i - p] for every i >= p (len(key) if none repeats)."""
    return next((p for p in range(1, len(key) // 2 + 1) if key[p:] == key[:-p]), len(key))


def weakness(key: str) -> str | None:
    """Why `key` is refused, or None. The reason never quotes the key."""
    if len(key) < MIN_LENGTH:
        return f"it has {len(key)} characters, fewer than {MIN_LENGTH}"
    if not all("!" <= ch <= "~" for ch in key):
        return "it holds a space, a control or a non-ASCII character"
    bits = entropy_bits(key)
    if bits < MIN_BITS:
        return f"its estimated entropy is {bits:.0f} bits, below {MIN_BITS:.0f}"
    return None
