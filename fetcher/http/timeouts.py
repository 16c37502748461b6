"""Per-attempt timeouts that follow the server's usual response time.

A fixed timeout has to be generous (30 s by default) so that a slow but
healthy API is not cut off, and then a hung request costs all of it. fetcher
keeps that fixed value as a ceiling and, once it has seen enough responses,
times an attempt out at ``factor`` times the recent 99th-percentile response
time (never below ``floor_s``). An attempt that follows a timeout gets twice
the previous allowance, so a server that has become uniformly slow is waited
for again within a few tries, rather than timed out forever.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["AdaptiveTimeout"]


class AdaptiveTimeout:
    """Chooses the timeout of each attempt from recent response times.

    Args:
        ceiling_s: the configured timeout; never exceeded.
        floor_s: never time out sooner than this.
        factor: multiple of the recent p99 response time.
        window: how many recent response times are kept.
        min_samples: responses needed before adapting (until then: the ceiling).
    """

    def __init__(
        self,
        ceiling_s: float,
        *,
        floor_s: float = 1.0,
        factor: float = 8.0,
        window: int = 256,
        min_samples: int = 32,
    ) -> None:
        self.ceiling_s = ceiling_s
        self.floor_s = min(floor_s, ceiling_s)
        self.factor = factor
        self.min_samples = min_samples
        self._samples: deque[float] = deque(maxlen=window)
        self._since_estimate = 0
        self._estimate: float | None = None

    def observe(self, seconds: float) -> None:
        """Record how long a successful response took."""
        self._samples.append(seconds)
        self._since_estimate += 1

    def _p99(self) -> float | None:
        if len(self._samples) < self.min_samples:
            return None
        if self._estimate is None or self._since_estimate >= 16:
            ordered = sorted(self._samples)
            self._estimate = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
            self._since_estimate = 0
        return self._estimate

    def for_attempt(self, timeouts_before: int = 0) -> float:
        """The timeout for an attempt after ``timeouts_before`` timed-out attempts of its page."""
        p99 = self._p99()
        if p99 is None:
            return self.ceiling_s
        base = max(self.floor_s, self.factor * p99)
        return min(self.ceiling_s, base * 2.0**timeouts_before)
