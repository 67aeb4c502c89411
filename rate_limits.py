"""Per-client rate limits, one per route group: ``inference`` (POST /inference) and ``management`` (every other
route behind the key), counted per key, or per client address when the server has no keys.

The counting is the ``limits`` package's (the library under slowapi), in memory: a moving window, so a client gets
at most N requests in any period of the limit's length, with no burst at a window's edge as fixed windows allow;
``limits`` has no token bucket, and a moving window bounds the same thing. slowapi itself is not used: it wants a
decorator and a ``request`` argument on every route, where one router-level dependency per group says it once.
The counts live in this process: several servers (or workers) would each count on their own.
"""

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

INFERENCE = "inference"
MANAGEMENT = "management"


@dataclass(frozen=True)
class Refusal:
    """A request over its group's limit: which limit, and in how many seconds the next one is let through."""

    group: str
    limit: str
    retry_after_s: int


def parse_rate(text: str) -> list[RateLimitItem]:
    """``"100/second"``, ``"10/second;300/minute"``, ... as ``limits`` items; empty text is no limit.
    Raises ValueError on text ``limits`` cannot read."""
    return parse_many(text) if text.strip() else []


class RateLimits:
    """The limits of each route group, and the counts of what each client used of them."""

    def __init__(self, rates: dict[str, str]) -> None:
        self.rates = {group: parse_rate(text) for group, text in rates.items()}
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def hit(self, group: str, client: str) -> Refusal | None:
        """Count one request of ``client`` to ``group``; a Refusal when that takes it over a limit (the refused
        request is not counted, so a client that waits as told gets through)."""
        for item in self.rates.get(group, []):
            if not self._limiter.hit(item, group, client):
                stats = self._limiter.get_window_stats(item, group, client)
                retry_after = max(1, math.ceil(stats.reset_time - time.time()))
                return Refusal(group=group, limit=str(item), retry_after_s=retry_after)
        return None
