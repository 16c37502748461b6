"""Request rate and requests in flight, shared by every worker of a run.

The API's rate limit is low and undocumented, so for a long export the limit,
not the network, sets the pace. The :class:`Limiter` aims to run *at* the
limit and never above it. Before each request (retries included) a worker
asks :meth:`Limiter.slot` for a turn; after each response the client reports
what it saw with :meth:`Limiter.observe`. Five things decide a turn:

1. **In flight**: at most ``max_in_flight`` requests at once. Given room
   (``max_auto_in_flight``, when the caller did not fix the concurrency), the
   limiter raises it, once it has measured the server's window twice (the
   time between the ends of windows in a row), to what the advertised window
   allows in one second: ``x-ratelimit-limit: 40`` on a 1 s window lets 40
   go at once, and with 16 in flight the last of them would wait two more
   round trips at every window's edge. A slow window (20 a minute) raises
   nothing, and the cap is never lowered.
2. **Pause**: after a refusal (429, or the 400 that says "Rate Limit") every
   worker waits out the ``Retry-After``, not only the one refused.
3. **The server's window**: responses carry ``x-ratelimit-remaining`` and
   ``x-ratelimit-reset``. The limiter keeps a budget for the current window:
   the last ``remaining`` minus the requests still in flight (they may count
   against it), minus each request it lets go. At zero, every worker waits
   for the reset; at the reset the budget is ``x-ratelimit-limit`` again.
4. **The configured rate** (``--rate-limit 30/min``), as a sliding window: at
   most 30 requests in *any* 60 seconds. Any fixed window the server counts
   in lies inside one such span, so the server never sees more than 30 in a
   window, and the whole quota can still go out at once when a window opens.
5. **Pace**: on top, an adaptive minimum interval for servers that send no
   headers: a refusal sets it to half the throughput that led to it; each run
   of successes speeds it up again by a quarter, until it is off. With a
   configured rate it stops at the rate's even spacing instead: a server that
   refused the rate's bursts once would refuse them again.

Why not aiolimiter for the configured rate: its leaky bucket lets a burst of
``max_rate`` through and then the steady rate, so in the first window of a
fixed-window server it sends up to twice the limit and is refused; with a
bucket of one it cannot exceed the limit but spaces requests evenly, which
wastes a window's quota (0.75 of the limit, measured). The sliding window is
a deque of the last N send times. The clock and sleep are injectable so that
all of this is tested on a fake clock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final

import anyio

from fetcher.retry import parse_retry_after

__all__ = ["Limiter", "LimiterStats", "Rate", "header_int", "one_second_of", "parse_reset"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

_RATE_RE: Final = re.compile(
    r"^\s*(?P<n>\d+(?:\.\d+)?)\s*/\s*(?P<k>\d+(?:\.\d+)?)?\s*(?P<unit>ms|s|sec|second|seconds|"
    r"m|min|minute|minutes|h|hr|hour|hours)\s*$",
    re.IGNORECASE,
)
_UNIT_S: Final = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
}

#: The most send times the configured rate's sliding window remembers.
_MAX_WINDOW: Final = 100_000

#: Reset values below this are "seconds from now"; above, epoch seconds.
_EPOCH_THRESHOLD: Final = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Rate:
    """A request rate: ``requests`` per ``period_s`` seconds.

    Parse one with :meth:`parse`: ``"30/min"``, ``"10/s"``, ``"1000/hour"``, ``"20/2s"``.
    """

    requests: float
    period_s: float

    def __post_init__(self) -> None:
        if not (self.requests > 0 and self.period_s > 0):
            raise ValueError("a rate needs a positive number of requests and a positive period")

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Parse ``N/unit`` or ``N/Kunit``.

        Raises:
            ValueError: naming the accepted forms.
        """
        match = _RATE_RE.match(text)
        if match is None:
            raise ValueError(
                f"cannot read rate {text!r}; write requests per period, e.g. 30/min, 10/s, 20/2s"
            )
        multiple = float(match["k"]) if match["k"] else 1.0
        return cls(float(match["n"]), multiple * _UNIT_S[match["unit"].lower()])

    @property
    def interval_s(self) -> float:
        """Seconds between two requests at this rate."""
        return self.period_s / self.requests

    @property
    def window(self) -> tuple[int, float]:
        """``(n, seconds)``: at most ``n`` requests in any span of ``seconds``.

        No span of the period may ever hold more than the rate allows, so a
        fraction above one is rounded down (``2.5/s`` is 2 per second: "2 per
        0.8 s" would let 4 into some second), and a rate below one per period
        stretches the span (``0.5/s`` is 1 per 2 s). An absurdly high rate keeps
        a bounded log of sends (at most :data:`_MAX_WINDOW` per proportional span).
        """
        if self.requests < 1:
            return 1, self.period_s / self.requests
        n = math.floor(self.requests)
        if n > _MAX_WINDOW:
            return _MAX_WINDOW, self.period_s * _MAX_WINDOW / n
        return n, self.period_s

    @property
    def per_second(self) -> float:
        """Requests per second."""
        return self.requests / self.period_s

    def __str__(self) -> str:
        return f"{self.requests:g}/{self.period_s:g}s"


@dataclass(slots=True)
class LimiterStats:
    """What the limiter did, for the run report."""

    requests: int = 0
    refusals: int = 0
    waits: int = 0
    waited_s: float = 0.0
    max_in_flight: int = 0


def one_second_of(n: int, span_s: float) -> int:
    """Requests that may go at once under "``n`` per ``span_s``": one second's worth.

    A window of a second or less may go whole; a longer one, its share of a
    second (rounded up). Both the default concurrency of a configured rate and
    the in-flight raise from the server's window are sized by this.
    """
    return min(n, math.ceil(n / max(span_s, 1.0)))


def parse_reset(value: str, *, now_wall: float) -> float | None:
    """Seconds until an ``x-ratelimit-reset`` value: epoch, delta seconds or a date.

    Returns:
        Seconds from now (may be <= 0), or ``None`` when unreadable.
    """
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            return None
        if number >= _EPOCH_THRESHOLD * 1000:  # epoch milliseconds
            return number / 1000 - now_wall
        return number - now_wall if number >= _EPOCH_THRESHOLD else number
    seconds = parse_retry_after(text, now=now_wall)  # an HTTP date, as Retry-After has it
    if seconds is not None:
        return seconds
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp() - now_wall


def header_int(headers: Mapping[str, str], name: str) -> int | None:
    """An integer header (``x-ratelimit-remaining``), or ``None`` if absent or unreadable."""
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return int(float(raw.strip()))
    except ValueError:
        return None


class Limiter:
    """Paces requests to stay at, never above, the API's rate limit.

    Args:
        rate: a configured ceiling; ``None`` leaves pacing to the server's signals.
        max_in_flight: requests allowed in flight at once.
        max_auto_in_flight: the most ``max_in_flight`` may be raised to, once the
            server's headers show a window that allows more in one second
            (``None``: never raised).
        adaptive: follow rate-limit headers and slow down after refusals.
        margin_s: extra wait after a window's reset, for clock and rounding slack.
        default_pause_s: pause after a refusal that gave no ``Retry-After``.
        max_pause_s: the longest pause a ``Retry-After`` can impose on every worker
            (a hostile or broken value of years must not hang the run).
        recover_after: successful requests that speed the adaptive pace up one step.
        clock: monotonic seconds (injectable for tests).
        wall_clock: epoch seconds, to read epoch reset headers (injectable).
        sleep: the async sleep (injectable for tests).
    """

    def __init__(
        self,
        *,
        rate: Rate | None = None,
        max_in_flight: int = 16,
        max_auto_in_flight: int | None = None,
        adaptive: bool = True,
        margin_s: float = 0.02,
        default_pause_s: float = 1.0,
        max_pause_s: float = 300.0,
        recover_after: int = 20,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.rate = rate
        self.max_in_flight = max_in_flight
        self._max_auto_in_flight = max_auto_in_flight or max_in_flight
        self.adaptive = adaptive
        self._margin = margin_s
        self._default_pause = default_pause_s
        self._max_pause = max_pause_s
        self._recover_after = recover_after
        self._clock = clock
        self._wall = wall_clock
        self._sleep = sleep
        self._slots = anyio.Semaphore(max_in_flight)
        self._in_flight = 0
        self._last_send = -math.inf
        # The configured rate's sliding window: the times of the last n sends.
        self._window_n, self._window_s = rate.window if rate else (0, 0.0)
        self._sent: deque[float] = deque(maxlen=max(self._window_n, 1))
        self._paused_until = -math.inf
        # Server window: budget left and when it resets (monotonic), limit per window.
        self._budget: int | None = None
        self._window_reset: float | None = None
        self._window_limit: int | None = None
        # The server window's length, learnt from the gaps between the ends of
        # windows in a row (see _learn_span).
        self._window_span = 0.0
        self._span_samples = 0
        self._span_end: float | None = None
        self._last_remaining: int | None = None
        # Adaptive pace: an interval on top of the configured one, or None.
        self._adaptive_interval: float | None = None
        self._successes_since_change = 0
        self._since_refusal_t = clock()
        self._since_refusal_n = 0
        self.stats = LimiterStats()

    # -- what callers see -------------------------------------------------

    @property
    def max_auto_in_flight(self) -> int:
        """The most requests in flight the server's window may raise ``max_in_flight`` to."""
        return self._max_auto_in_flight

    @property
    def waiting_until(self) -> float | None:
        """The monotonic time workers are held until for the rate limit, if they are."""
        now = self._clock()
        until = self._paused_until
        reset = self._window_reset
        if self._budget is not None and self._budget <= 0 and reset is not None and reset > now:
            until = max(until, reset + self._margin)
        return until if until > now else None

    @property
    def interval_s(self) -> float:
        """The current average interval between requests: the configured rate's or the pace's."""
        configured = self.rate.interval_s if self.rate else 0.0
        return max(configured, self._adaptive_interval or 0.0)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for a turn to send one request; hold an in-flight slot while inside."""
        async with self._slots:
            await self._wait_turn()
            self._in_flight += 1
            self.stats.requests += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self._in_flight)
            try:
                yield
            finally:
                self._in_flight -= 1

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        """Learn from one response: its rate-limit headers and whether it succeeded."""
        if not self.adaptive:
            return
        self._read_window(headers)
        if 200 <= status < 300:
            self._since_refusal_n += 1
            self._speed_up()

    def refused(self, retry_after: float | None, headers: Mapping[str, str] | None = None) -> None:
        """A request was refused for the rate limit: every worker pauses.

        Args:
            retry_after: seconds the server asked to wait, if it said.
            headers: the refusal's headers, for its window figures.
        """
        self.stats.refusals += 1
        now = self._clock()
        pause = retry_after if retry_after is not None and retry_after > 0 else None
        if pause is None:
            pause = self._default_pause
        pause = min(pause, self._max_pause)
        self._paused_until = max(self._paused_until, now + pause + self._margin)
        if not self.adaptive:
            return
        if headers is not None:
            self._read_window(headers)
        # Slow down to half the throughput that ran into the limit.
        elapsed = max(now - self._since_refusal_t, 1e-3)
        throughput = max(self._since_refusal_n, 1) / elapsed
        slower = 2.0 / throughput
        self._adaptive_interval = max(self._adaptive_interval or 0.0, slower)
        self._successes_since_change = 0
        self._since_refusal_t = now
        self._since_refusal_n = 0

    # -- internals --------------------------------------------------------

    def _speed_up(self) -> None:
        if self._adaptive_interval is None:
            return
        self._successes_since_change += 1
        if self._successes_since_change < self._recover_after:
            return
        self._successes_since_change = 0
        self._adaptive_interval /= 1.25
        if self.rate is not None:
            # A configured rate was refused: the server does not take its bursts.
            # The pace stays, no faster than the rate's even spacing, instead of
            # switching off and letting whole windows go at once again.
            n, span = self._window_n, self._window_s
            self._adaptive_interval = max(self._adaptive_interval, span / n)
        elif self._adaptive_interval <= 1e-3:
            self._adaptive_interval = None

    def _read_window(self, headers: Mapping[str, str]) -> None:
        remaining = header_int(headers, "x-ratelimit-remaining")
        limit = header_int(headers, "x-ratelimit-limit")
        raw_reset = headers.get("x-ratelimit-reset")
        if limit is not None and limit > 0:
            self._window_limit = limit
        if remaining is None or raw_reset is None:
            return
        until = parse_reset(raw_reset, now_wall=self._wall())
        if until is None:
            return
        now = self._clock()
        reset = now + max(until, 0.0)
        if self._max_auto_in_flight > self.max_in_flight:
            self._learn_span(reset, until, remaining)
        # Requests still in flight may already count against what is left.
        budget = remaining - self._in_flight
        if self._window_reset is None or self._budget is None or reset > self._window_reset + 0.5:
            # A new window (or the first we hear of): take its figure.
            self._window_reset = reset
            self._budget = budget
        else:
            # Same window; answers arrive out of order, the lowest is the truest.
            self._budget = min(self._budget, budget)

    def _learn_span(self, reset: float, until: float, remaining: int) -> None:
        """Sample the server window's length; with two samples, widen.

        A sample is the time between the ends of two windows in a row: never
        shorter than a window (longer if the run idled between them), so the
        largest sample errs on the slow side. A window counts as the next one
        only when its budget went up and its end moved on by more than half a
        second; an answer about a window that has ended (a request the old
        window counted, answered after its reset) counts for nothing, nor does
        a refusal's (its budget is spent). The first window's end is a true end
        even if it opened before the run.
        """
        last_remaining, self._last_remaining = self._last_remaining, remaining
        if until <= 0:
            return
        if self._span_end is None:
            self._span_end = reset
            return
        rose = last_remaining is not None and remaining > last_remaining
        if rose and reset > self._span_end + 0.5:
            self._window_span = max(self._window_span, reset - self._span_end)
            self._span_samples += 1
            self._span_end = reset
            if self._span_samples >= 2:
                self._widen()

    def _widen(self) -> None:
        """Let one second of the server's advertised window go at once, within the room given."""
        limit = self._window_limit
        if limit is None:
            return
        wanted = min(one_second_of(limit, self._window_span), self._max_auto_in_flight)
        if wanted > self.max_in_flight:
            for _ in range(wanted - self.max_in_flight):
                self._slots.release()
            self.max_in_flight = wanted

    async def _wait_turn(self) -> None:
        waited = False
        started = self._clock()
        while True:
            now = self._clock()
            delay = 0.0
            if now < self._paused_until:
                delay = self._paused_until - now
            elif self._window_reset is not None and now >= self._window_reset + self._margin:
                # The window has reset: a full window, less what is still in flight.
                # Its own end is unknown until the next response says.
                limit = self._window_limit
                self._budget = None if limit is None else limit - self._in_flight
                self._window_reset = None
                continue
            elif self._budget is not None and self._budget <= 0 and self._window_reset is not None:
                delay = self._window_reset + self._margin - now
            else:
                next_at = self._last_send + (self._adaptive_interval or 0.0)
                if self._window_n and len(self._sent) == self._window_n:
                    # The oldest of the last n sends must be a whole span ago.
                    next_at = max(next_at, self._sent[0] + self._window_s + self._margin)
                if now < next_at:
                    delay = next_at - now
            if delay <= 0:
                break
            waited = True
            await self._sleep(delay)
        if waited:
            self.stats.waits += 1
            self.stats.waited_s += self._clock() - started
        self._last_send = self._clock()
        if self._window_n:
            self._sent.append(self._last_send)
        if self._budget is not None:
            self._budget -= 1
