"""A fixed-window request limit per API key, and the headers that describe it.

A window opens with the first request after the previous one expired and lasts
``window_s``; up to ``limit`` requests are admitted in it. Refused requests do
**not** consume quota (the common server behaviour, e.g. NestJS's throttler
after a block): a client that keeps hammering is refused until the window ends,
then gets a fresh quota. The clock is injectable so the arithmetic can be tested
without sleeping.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from fetcher.simulator._config import ResetFormat

__all__ = ["Decision", "FixedWindowLimiter"]


@dataclass(frozen=True, slots=True)
class Decision:
    """The limiter's answer for one request.

    Attributes:
        allowed: whether the request is admitted.
        limit: requests per window.
        remaining: requests left in the current window after this one.
        reset_in: seconds until the current window ends (> 0).
    """

    allowed: bool
    limit: int
    remaining: int
    reset_in: float

    @property
    def retry_after(self) -> int:
        """Whole seconds until the window resets, rounded up, at least 1."""
        return max(1, math.ceil(self.reset_in))

    def headers(self, reset_format: ResetFormat, wall_clock: Callable[[], float]) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers for this decision."""
        if reset_format == "seconds":
            reset = str(self.retry_after)
        elif reset_format == "epoch":
            # Epoch seconds with milliseconds, as several APIs send them: a client
            # can then resume right at the reset instead of up to a second late.
            reset = f"{wall_clock() + self.reset_in:.3f}"
        else:
            reset = email.utils.formatdate(math.ceil(wall_clock() + self.reset_in), usegmt=True)
        return {
            "x-ratelimit-limit": str(self.limit),
            "x-ratelimit-remaining": str(self.remaining),
            "x-ratelimit-reset": reset,
        }


class FixedWindowLimiter:
    """Admit up to ``limit`` requests per ``window_s`` seconds per key.

    Args:
        limit: requests per window.
        window_s: window length in seconds.
        clock: a monotonic clock in seconds.
    """

    def __init__(
        self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = limit
        self._window_s = window_s
        self._clock = clock
        # key -> (window start, requests admitted in it)
        self._windows: dict[str, tuple[float, int]] = {}

    def hit(self, key: str) -> Decision:
        """Account one request for ``key`` and say whether it is admitted."""
        now = self._clock()
        start, used = self._windows.get(key, (now, 0))
        if now >= start + self._window_s:
            start, used = now, 0
        allowed = used < self._limit
        if allowed:
            used += 1
        self._windows[key] = (start, used)
        return Decision(
            allowed=allowed,
            limit=self._limit,
            remaining=self._limit - used,
            reset_in=start + self._window_s - now,
        )

    def reset(self) -> None:
        """Forget every window (a fresh quota for every key)."""
        self._windows.clear()
