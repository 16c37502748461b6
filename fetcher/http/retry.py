"""The backoff policy: what is retried, and how long to wait before the next try.

One declared policy, :class:`RetryPolicy`, drives a `tenacity`_ loop. We use
tenacity (the engine under stamina) directly because it lets us inject the
sleep function and the clock, so the whole retry loop runs on a fake clock in
tests, and because its ``stop``/``wait`` hooks see the exception, which is
where ``Retry-After`` lives.

What is retried is decided by the exception (see the tree in
:mod:`fetcher.errors`): rate-limit refusals, 5xx and 408, timeouts, connection
errors, and 2xx bodies that are not valid JSON or not a recognisable page. The
auth 400, validation 400s and other 4xx are not.

How long to wait:

1. a ``Retry-After`` the server sent wins (seconds or an HTTP date); one
   longer than ``max_retry_after_s`` gives the page up at once (a server that
   asks for years is not coming back in this run); a zero or negative one is
   ignored, so a server that says "0" cannot make us hot-loop;
2. otherwise exponential backoff with full jitter: a uniform random wait in
   ``[0, min(backoff_max_s, backoff_base_s * 2 ** (retry - 1))]``
   (AWS Architecture Blog, "Exponential Backoff and Jitter").

A page gives up after ``attempts`` tries, or when the next wait would end
past its ``deadline_s``. Retries go back through the limiter, so they count
against the rate like any other request.

.. _tenacity: https://tenacity.readthedocs.io/
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from fetcher import defaults
from fetcher.errors import FetcherError, RateLimitedError, ValueConfigError

__all__ = ["RetryPolicy", "parse_retry_after"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
RetryHook = Callable[[int, BaseException, float], None]


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Parse a ``Retry-After`` header: delay-seconds or an HTTP date.

    Args:
        value: the header's value, or ``None`` when absent.
        now: the current epoch time (for HTTP dates); defaults to ``time.time()``.

    Returns:
        Seconds to wait (may be zero or negative when the date is in the past),
        or ``None`` when the header is missing or unreadable.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp() - (time.time() if now is None else now)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to retry a page request and how long to wait in between.

    Args:
        attempts: tries per page, the first one included (>= 1).
        deadline_s: a page gives up when its next wait would end later than
            this many seconds after its first try.
        backoff_base_s: the cap of the first backoff; doubles per retry.
        backoff_max_s: the largest backoff the formula produces.
        max_retry_after_s: the longest ``Retry-After`` waited for; a page asked
            to wait longer gives up at once (see :meth:`asks_too_long`).
    """

    attempts: int = defaults.MAX_ATTEMPTS
    deadline_s: float = 600.0
    backoff_base_s: float = 0.1
    backoff_max_s: float = 10.0
    max_retry_after_s: float = defaults.MAX_RETRY_AFTER_S
    seed: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueConfigError("must be at least 1", field="attempts")
        for name in ("deadline_s", "backoff_base_s", "backoff_max_s", "max_retry_after_s"):
            if getattr(self, name) < 0:
                raise ValueConfigError("must not be negative", field=name)

    @staticmethod
    def should_retry(exc: BaseException) -> bool:
        """Whether ``exc`` is worth another try (the error classes say so)."""
        return isinstance(exc, FetcherError) and exc.retryable

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full-jitter exponential backoff before the ``retry``-th retry (1-based)."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2.0 ** max(retry - 1, 0))
        return rng.uniform(0.0, ceiling)

    def asks_too_long(self, exc: BaseException | None) -> bool:
        """Whether ``exc`` carries a ``Retry-After`` longer than :attr:`max_retry_after_s`.

        Such a page is given up at once rather than waited for: a server that
        asks for hours (or years) is not coming back within this run.
        """
        retry_after = getattr(exc, "retry_after", None)
        return isinstance(retry_after, int | float) and retry_after > self.max_retry_after_s

    def wait(self, retry: int, exc: BaseException | None, rng: random.Random) -> float:
        """Seconds to wait before the ``retry``-th retry after ``exc``.

        A refused probe of the server's window goes again at once (the limiter
        holds it until the window opens); a positive ``retry_after`` on the error
        wins (capped); otherwise the jittered backoff.
        """
        if isinstance(exc, RateLimitedError) and exc.probe:
            return 0.0
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, int | float) and retry_after > 0:
            return min(float(retry_after), self.max_retry_after_s)
        return self.backoff(retry, rng)

    def retrying(
        self,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
        rng: random.Random | None = None,
        on_retry: RetryHook | None = None,
    ) -> AsyncRetrying:
        """A tenacity loop for one page: ``async for attempt in policy.retrying(): ...``.

        Args:
            clock: monotonic seconds, injectable for tests.
            sleep: the async sleep used between tries, injectable for tests.
            rng: the random source of the jitter.
            on_retry: called with (next attempt number, error, wait) before each wait.
        """
        rng = rng or random.Random(self.seed)  # noqa: S311  (jitter, not crypto)
        started = clock()

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            return self.wait(state.attempt_number, exc, rng)

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= self.attempts:
                return True
            if self.asks_too_long(state.outcome.exception() if state.outcome else None):
                return True
            upcoming = state.upcoming_sleep or 0.0
            return clock() - started + upcoming > self.deadline_s

        def before_sleep(state: RetryCallState) -> None:
            if on_retry is not None and state.outcome is not None:
                exc = state.outcome.exception()
                assert exc is not None  # we only retry on exceptions
                on_retry(state.attempt_number + 1, exc, state.upcoming_sleep or 0.0)

        return AsyncRetrying(
            sleep=sleep,
            stop=stop,
            wait=wait,
            retry=retry_if_exception(self.should_retry),
            before_sleep=before_sleep,
            reraise=True,
        )
