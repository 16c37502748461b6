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
   nothing, and the cap is never lowered. The run's first window, read as
   ending within a second and spent by nobody before, is lent what it has
   left at once; without a length to justify them the lent slots go back.
2. **Pause**: after a refusal (429, or the 400 that says "Rate Limit") every
   worker waits out the ``Retry-After``, not only the one refused.
3. **The server's window**: responses carry ``x-ratelimit-remaining`` and
   ``x-ratelimit-reset``. The limiter keeps a budget for the current window:
   the last ``remaining`` minus the requests still in flight (they may count
   against it), minus each request it lets go. At zero, every worker waits
   for the reset; at the reset the budget is ``x-ratelimit-limit`` again.
   While the window's end is known to worse than 60 ms, one probe goes
   halfway through the span it may end in, three quarters after a refused
   one (see :meth:`Limiter._probe_time`).
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
import dataclasses
import math
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import anyio
import structlog

from fetcher.errors import ValueConfigError
from fetcher.http.quota import Quota, Ticket, earliest_end, latest_end, read_reset

if TYPE_CHECKING:
    from fetcher.http.shared import Grant, SharedWindow

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

_log = structlog.get_logger("fetcher.http.limiter")

#: The longest a waiting worker sleeps before it looks at the window again.
_RECHECK_S: Final = 0.05

#: A window end known to within this many seconds is not probed for (see
#: :meth:`Limiter._probe_time`).
_PROBE_PRECISION_S: Final = 0.06
#: Where in the span the window may end in the probe goes, from its start: halfway,
#: or further once a probe was refused (see :meth:`Limiter._probe_time`).
_PROBE_AT: Final = 0.5
_PROBE_AT_AFTER_REFUSAL: Final = 0.75

#: Round trips remembered for their spread (see :meth:`Limiter._slack`).
_RTT_MEMORY: Final = 32
#: The most of a window's length the wait after its end may grow to (see _slack).
_MAX_SLACK_OF_WINDOW: Final = 0.5


@dataclass(frozen=True, slots=True)
class Rate:
    """A request rate: ``requests`` per ``period_s`` seconds.

    Parse one with :meth:`parse`: ``"30/min"``, ``"10/s"``, ``"1000/hour"``, ``"20/2s"``.
    """

    requests: float
    period_s: float

    def __post_init__(self) -> None:
        if not (self.requests > 0 and self.period_s > 0):
            raise ValueConfigError(
                "a rate needs a positive number of requests and a positive period", field="rate"
            )

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Parse ``N/unit`` or ``N/Kunit``.

        Raises:
            ValueConfigError: naming the accepted forms (a ``ValueError`` too).
        """
        match = _RATE_RE.match(text)
        if match is None:
            raise ValueConfigError(
                f"cannot read rate {text!r}; write requests per period, e.g. 30/min, 10/s, 20/2s",
                field="rate",
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
    probes: int = 0


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
    reading = read_reset(value, now_wall=now_wall)
    return None if reading is None else reading.seconds


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
        margin_s: extra wait after a window's end, for clock and rounding slack.
        default_pause_s: pause after a refusal that gave no ``Retry-After``.
        max_pause_s: the longest pause a ``Retry-After`` can impose on every worker
            (a hostile or broken value of years must not hang the run).
        recover_s: with no headers to follow, the adaptive pace halves after
            each this many seconds without a refusal.
        clock: monotonic seconds (injectable for tests).
        wall_clock: epoch seconds, to read epoch reset headers (injectable).
        sleep: the async sleep (injectable for tests).
        shared: a budget shared with other processes on the same key (Redis);
            each request also takes its turn there.
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
        recover_s: float = 0.5,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        sleep: Sleep = anyio.sleep,
        shared: SharedWindow | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueConfigError("must be at least 1", field="max_in_flight")
        self.rate = rate
        self.max_in_flight = max_in_flight
        self._max_auto_in_flight = max_auto_in_flight or max_in_flight
        self.adaptive = adaptive
        self._margin = margin_s
        self._default_pause = default_pause_s
        self._max_pause = max_pause_s
        self._recover_s = recover_s
        self._halving_s = recover_s
        self._clock = clock
        self._wall = wall_clock
        self._sleep = sleep
        self.shared = shared
        self._grant: Grant | None = None  # the last turn's grant from the shared budget
        self._grant_ends_at: float | None = None  # ... the sure end of its window, our clock
        # Our window number -> the shared window its first request was granted in.
        self._shared_at_open: dict[int, int] = {}
        self._answered = False
        self._slots = anyio.Semaphore(max_in_flight)
        self._lent = 0  # slots lent to the run's first window (see _widen)
        self._owed = 0  # slots to take back out of use as requests end
        self._in_flight = 0
        # The probe of where the current window ends (see _probe_time): the window it
        # is for, when it goes (None: not in this window), and whether this turn is it.
        self._probe_window = -1
        self._probe_at: float | None = None
        self._probe_due = False
        self._pause_probe_at: float | None = None  # see refused
        self._probe_out: Ticket | None = None  # the probe in flight, if any
        self._probe_high = False  # the last probe was refused: the next goes further in
        self._last_send = -math.inf
        self._rtts: deque[float] = deque(maxlen=_RTT_MEMORY)  # the last answers' round trips
        # The configured rate's sliding window: the times of the last n sends.
        self._window_n, self._window_s = rate.window if rate else (0, 0.0)
        self._sent: deque[float] = deque(maxlen=max(self._window_n, 1))
        self._paused_until = -math.inf
        #: The server's window, learned from its headers (see fetcher.http.quota).
        # With a shared budget the others on the key are in it: nothing to keep back.
        self.quota = Quota(keep_back=shared is None)
        self._told_period: float | None = None
        # Woken on every answer: a waiting worker may go sooner than it planned.
        self._changed = anyio.Event()
        # Adaptive pace, for servers that send no headers: an interval, or None.
        self._adaptive_interval: float | None = None
        self._pace_set_at = clock()
        self._pace_from: float | None = None
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
        budget = self.quota.budget()
        opens = self.quota.next_open()
        if budget is not None and budget <= 0 and opens is not None:
            until = max(until, opens + self._slack())
        return until if until > now else None

    @property
    def interval_s(self) -> float:
        """The current average interval between requests: the configured rate's or the pace's."""
        configured = self.rate.interval_s if self.rate else 0.0
        return max(configured, self._pace())

    @contextlib.asynccontextmanager
    async def slot(self, *, page: bool = True) -> AsyncIterator[Ticket]:
        """Wait for a turn to send one request; hold an in-flight slot while inside.

        Args:
            page: the request is for a page (``False``: a list or a key probe,
                whose answer does not start the run's first burst; see
                :attr:`~fetcher.http.quota.Ticket.page`).

        Yields:
            The request's :class:`~fetcher.http.quota.Ticket`; hand it back to
            :meth:`observe` or :meth:`refused` with the answer.
        """
        async with self._slots:
            await self._wait_turn()
            ticket = self.quota.sent(self._clock())
            if not page:
                ticket = dataclasses.replace(ticket, page=False)
            if self._probe_due:
                self._probe_due, self._probe_at = False, None
                ticket = dataclasses.replace(ticket, probe=True)
                self._probe_out = ticket
                self.stats.probes += 1
            if (grant := self._grant) is not None and grant.window:
                ticket = dataclasses.replace(
                    ticket,
                    shared_window=grant.window,
                    shared_twice=grant.charged_next,
                    shared_said=grant.said_remaining,
                    shared_ends_at=self._grant_ends_at,
                )
                self._shared_at_open.setdefault(ticket.window, grant.window)
            self._in_flight += 1
            self.stats.requests += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self._in_flight)
            try:
                yield ticket
            finally:
                self._in_flight -= 1
                self.quota.done(ticket)
                if ticket.probe:
                    self._probe_out = None
                self._wake()
        if self._owed:
            self._collect()

    def observe(
        self, status: int, headers: Mapping[str, str], ticket: Ticket | None = None
    ) -> None:
        """Learn from one response: its rate-limit headers and whether it succeeded.

        Args:
            status: the response's status.
            headers: its headers.
            ticket: the request's ticket from :meth:`slot` (``None``: as if sent now).
        """
        self._answered = True
        if ticket is not None:
            self._rtts.append(self._clock() - ticket.sent_at)
            if ticket.probe:
                self._probe_high = False
        if not self.adaptive:
            return
        before = self._state()
        self._read_window(headers, ticket, refused=False)
        if 200 <= status < 300:
            self._since_refusal_n += 1
        if ticket is not None and ticket.probe and self.quota.window > ticket.window:
            # A probe found a new window: a pause for the old one is over.
            self._paused_until = min(self._paused_until, self._clock())
            self._pause_probe_at = None
        if self._state() != before:
            self._wake()

    def refused(
        self,
        retry_after: float | None,
        headers: Mapping[str, str] | None = None,
        ticket: Ticket | None = None,
    ) -> None:
        """A request was refused for the rate limit: every worker pauses.

        The pause is the ``Retry-After``, or until the window's end when that
        is known sooner and better: a whole-second ``Retry-After: 1`` on a
        window that ends in 0.2 s would waste most of a window. With no
        ``Retry-After``, until the window's end, else ``default_pause_s``.
        Alone on the key, with the end known to the second only, one request
        goes during the pause to ask whether the window ended (see
        :meth:`_pause_probe_time`).

        Args:
            retry_after: seconds the server asked to wait, if it said.
            headers: the refusal's headers, for its window figures.
            ticket: the refused request's ticket from :meth:`slot`.
        """
        self.stats.refusals += 1
        self._answered = True
        now = self._clock()
        if ticket is not None:
            self._rtts.append(now - ticket.sent_at)
            if ticket.probe:
                self._probe_high = True
        if self.adaptive and headers is not None:
            self._read_window(headers, ticket, refused=True)
        if ticket is not None and (
            ticket.probe
            or (self.adaptive and self.quota.headers_seen and ticket.window < self.quota.window)
        ):
            # A probe of the window's end (sent with its quota spent: the window's end
            # holds every worker already), or sent in a window that has ended since:
            # it was full then, which says nothing of this one (pausing to this one's
            # end would idle it whole).
            self._wake()
            return
        pause = retry_after if retry_after is not None and retry_after > 0 else None
        opens = self.quota.next_open() if self.adaptive else None
        sure = opens is not None and opens == self.quota.sure_end
        if opens is not None and opens > now and (pause is None or sure or self.quota.precise):
            # The learned end: sooner than a rounded-up Retry-After, or all we have. A
            # sure end (read, not guessed) is as sure as the Retry-After: "1" read 0.8 s
            # into a window that ends by 0.2 s from now must not hold every worker for
            # the first 0.8 s of the next window too.
            pause = opens - now if pause is None else min(pause, opens - now)
        if pause is None:
            pause = self._default_pause
        pause = min(pause, self._max_pause)
        self._paused_until = max(self._paused_until, now + pause + self._margin)
        self._pause_probe_at = self._pause_probe_time(now, retry_after)
        if self.shared is not None:
            self.shared.pause(pause + self._margin)
        if self.adaptive and not self.quota.headers_seen:
            self._slow_down(now, pause)
        self._wake()

    # -- internals --------------------------------------------------------

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _state(self) -> tuple[int, bool, float | None]:
        """What a waiting worker's plan depends on: an answer that changes it wakes them."""
        budget = self.quota.budget()
        return (self.quota.window, budget is None or budget > 0, self.quota.next_open())

    def _slow_down(self, now: float, pause: float) -> None:
        """No headers to follow: pace at half the throughput that ran into the limit.

        The pace then halves every ``recover_s``, or every pause as long as the
        one just imposed (the server's hint of its window), whichever is longer.
        """
        self._halving_s = max(self._recover_s, pause)
        elapsed = max(now - self._since_refusal_t, 1e-3)
        throughput = max(self._since_refusal_n, 1) / elapsed
        self._pace_from = max(self._pace(), 2.0 / throughput)
        self._pace_set_at = now
        self._since_refusal_t = now
        self._since_refusal_n = 0

    def _pace(self) -> float:
        """The adaptive interval now: it halves every pause-length without a refusal.

        Time, not a count of successes, lifts it: at one request a second a
        count of 20 would take minutes per step. With a configured rate it
        stops at the rate's even spacing: a server that refused its bursts once
        would refuse them again.
        """
        if self._pace_from is None:
            return 0.0
        halvings = (self._clock() - self._pace_set_at) / self._halving_s
        interval: float = self._pace_from * 0.5 ** min(halvings, 60.0)
        if self.rate is not None:
            return max(interval, self._window_s / self._window_n)
        if interval <= 1e-3:
            self._pace_from = None
            return 0.0
        return interval

    def _read_window(
        self, headers: Mapping[str, str], ticket: Ticket | None, *, refused: bool
    ) -> None:
        now = self._clock()
        if ticket is None:
            ticket = self.quota.seen(now, in_flight=self._in_flight)
        raw_reset = headers.get("x-ratelimit-reset")
        reset = None if raw_reset is None else read_reset(raw_reset, now_wall=self._wall())
        before = self.quota.window
        remaining = header_int(headers, "x-ratelimit-remaining")
        self.quota.observe(
            ticket,
            now=now,
            remaining=remaining,
            limit=header_int(headers, "x-ratelimit-limit"),
            reset=reset,
            refused=refused,
        )
        if self.shared is not None:
            # What this answer says of the shared window its request was granted in.
            after = None if reset is None else earliest_end(ticket, now, reset)
            # Later than the shared window it was granted in: its window ends after that
            # one's sure end (what a process's first answers can tell), or our own
            # window says so, if that shared window was ours too when our window began
            # (else ours was behind).
            later = (
                after is not None
                and ticket.shared_ends_at is not None
                and after >= ticket.shared_ends_at
            ) or (
                self.quota.counted_later
                and self._shared_at_open.get(ticket.window) == ticket.shared_window
            )
            self.shared.saw(
                ticket.shared_window,
                remaining=0 if refused else remaining,
                ends_at=None if reset is None else latest_end(ticket, now, reset) + self._slack(),
                ends_after=after,
                later=later,
                charged_next=ticket.shared_twice,
                surely_here=not refused
                and not later
                and not self.quota.counted_later
                and _below(remaining, ticket.said_remaining, ticket.shared_said),
            )
            for old in [w for w in self._shared_at_open if w < self.quota.window - 2]:
                del self._shared_at_open[old]
        if self.quota.window != before:
            lo, hi = self.quota.end
            _log.debug(
                "rate-limit window began",
                window=self.quota.window,
                remaining=self.quota.budget(),
                ends_in_s=None if hi is None else round(hi - now, 3),
                end_known_to_s=None if hi is None else round(hi - lo, 3),
            )
        self._widen()

    def _widen(self) -> None:
        """Let one second of the server's window go at once, within the room given."""
        period, limit = self.quota.period, self.quota.limit
        if limit is None:
            return
        if period is None or period.hi == math.inf:
            end = self.quota.sure_end
            if (
                self.quota.window == 0
                and self.quota.alone_at_first
                and end is not None
                and end - self._clock() <= 1.0
            ):
                # The run's first window ends within a second, and nobody else had spent
                # of it: what it has left may go at once (held at 16, the last of 40
                # would wait a round trip, past its end). Lent for this window only: no
                # window length is known yet. With someone else's requests already in
                # it, the later ones show how much they spend (see Quota.budget). With
                # --shared-limiter the shared budget still grants each of them.
                lent = self.max_in_flight
                self._raise_in_flight(limit)
                self._lent += self.max_in_flight - lent
            elif self._lent:
                self._give_back(self._lent)
            return
        if self._told_period != period.hi:
            self._told_period = period.hi
            _log.debug(
                "rate-limit window length learned",
                limit=limit,
                period_s=round((period.lo + period.hi) / 2, 3),
                known_to_s=round(period.hi - period.lo, 3),
                assumed=self.quota.period_assumed,
            )
        wanted = one_second_of(limit, period.hi)
        if self._lent:
            # What the first window was lent beyond what its length allows goes back.
            self._give_back(min(self._lent, self.max_in_flight - wanted))
            self._lent = 0
        self._raise_in_flight(wanted)

    def _raise_in_flight(self, wanted: int) -> None:
        """Allow up to ``wanted`` requests in flight (within the room given; never lowered)."""
        wanted = min(wanted, self._max_auto_in_flight)
        if wanted > self.max_in_flight:
            for _ in range(wanted - self.max_in_flight):
                self._slots.release()
            self.max_in_flight = wanted

    def _give_back(self, n: int) -> None:
        """Lower ``max_in_flight`` by ``n`` (taken from the slots as requests end)."""
        if n <= 0:
            return
        self._lent = max(self._lent - n, 0)
        self.max_in_flight -= n
        self._owed += n
        self._collect()

    def _collect(self) -> None:
        """Take slots owed by :meth:`_give_back` out of use, as far as they are free."""
        while self._owed:
            try:
                self._slots.acquire_nowait()
            except anyio.WouldBlock:
                return
            self._owed -= 1

    def _server_delay(self, now: float) -> float | None:  # noqa: PLR0911  (one per case)
        """How long the server's window holds the next send (``None``: until an answer says)."""
        quota = self.quota
        opens = quota.next_open()
        slack = self._slack()
        if opens is not None and now >= opens + slack:
            quota.roll(now, slack_s=slack)
            opens = quota.next_open()
        budget = quota.budget()
        probe = self._probe_out
        if (
            budget is not None
            and probe is not None
            and probe.window < quota.window
            and not quota.holds(probe.seq)
        ):
            # The probe of the last window's end, still out, may be counted in this one.
            budget -= 1
        if budget is None:
            if not quota.headers_seen:
                return 0.0
            # The quota is unknown until an answer says: one request at a time.
            return 0.0 if self._in_flight == 0 else None
        if budget <= 0:
            if opens is not None:
                probe_at = self._probe_time()
                if probe_at is not None and now >= probe_at:
                    self._probe_due = True
                    return 0.0
                return min(opens + slack, probe_at or math.inf) - now
            if self._in_flight:
                return None  # an answer will say more
            # Spent, its end unknown, nothing out to tell: after a pause, one goes to ask.
            return self._last_send + self._default_pause - now
        if opens is not None and now >= opens:
            # Past the window's latest end, inside the margin: a request sent now is
            # counted in the next window, not in what this one had left, and the next
            # window's quota (taken whole at the roll) would not know of it: on a
            # loaded event loop 15 went here, and with the next 40 four were refused.
            return opens + slack - now
        if quota.shared and opens is not None and self.shared is None:
            # Another client spends this budget too: spread ours over what is left
            # of the window, rather than take it all at once and leave it none.
            spread = (opens - now) / budget
            return max(self._last_send + spread - now, 0.0)
        return 0.0

    def _slack(self) -> float:
        """How long after a window's latest end its next one is taken to have begun.

        The margin, or the spread of the last round trips when that is wider (up
        to half the window). The quota works in send times: a request sent at
        ``s`` is taken to be decided a constant time after ``s``. That time varies
        with the network's jitter, a new connection's handshake, or a busy event
        loop, and where it varies by more than the margin, a window's end read
        from one request is early for another: on a loaded machine, requests
        whose answers came 150 to 310 ms after their sends had the ones sent 20 ms
        after a window's end, by its readings, counted in it and refused. A round
        trip is the send's delay plus the answer's, so its spread bounds how much
        the delay to the decision varies.
        """
        if len(self._rtts) < 2:
            return self._margin
        spread = max(self._rtts) - min(self._rtts)
        period = self.quota.period
        cap = _MAX_SLACK_OF_WINDOW * (period.hi if period is not None else 1.0)
        return max(self._margin, min(spread, cap))

    def _probe_time(self) -> float | None:
        """When to send the one probe of where the current window ends (``None``: none).

        A whole-second reset ("1" on a 1 s window) never says where in the
        second a window ends, and a run that sends each window's quota the
        moment it opens has no request near the end to show it: every window
        then opens as late as the run's first request fell in its own, up to a
        second (0.7 s late, 0.81 of the limit, measured). So once the window's
        quota is spent, one more request goes halfway through the span in which
        the window may end (three quarters, after a refused one). Admitted, it
        was counted in the next window, which then began before it was sent;
        refused, the window had not ended.
        Either way the span shrinks, and with the window's length known (or
        assumed from whole-second resets) the next window's span is this one
        moved on by it: a few windows, a few probes, at most one refusal each,
        and the windows open within :data:`_PROBE_PRECISION_S` of their start.
        Three quarters after a refusal: where windows begin at their first
        request (NestJS) the end is always at the top of the span and every
        probe is refused; always halfway cost 7 refusals in 200 requests at 20
        per 2 s there, always three quarters 4, but it closed in on an end low in
        the span by only a quarter a window (a run starting 0.7 s into a 1 s
        window still opened its fifth window 0.42 s late: 0.88 of the limit).

        Only while nobody else spends the key (a refusal then says nothing of the
        window's end) and windows refill at their end.
        """
        quota = self.quota
        if quota.window == self._probe_window:
            return self._probe_at  # this window's probe: when it goes, or None once it went
        lo, hi = quota.end
        if (
            self._alone_on_refilling_windows()
            and not quota.halving
            # A length known well enough to carry what a probe finds over to the
            # next window.
            and quota.period is not None
            and quota.period.width <= _PROBE_PRECISION_S
            and quota.sure_end is not None
            and hi is not None
            and lo != -math.inf
            and hi - lo > _PROBE_PRECISION_S
        ):
            at = _PROBE_AT_AFTER_REFUSAL if self._probe_high else _PROBE_AT
            self._probe_window, self._probe_at = quota.window, lo + at * (hi - lo)
            return self._probe_at
        return None  # not now: asked again at the next turn (the end may be read by then)

    def _alone_on_refilling_windows(self) -> bool:
        """What any probe of a window's end needs: nobody else on the key, windows that refill.

        With another client a refusal says nothing of the window's end; where a
        window frees one slot at a time (a sliding log), an admitted probe says no
        window began.
        """
        quota = self.quota
        return self.shared is None and quota.keep_back and not quota.shared and quota.refills

    def _pause_probe_time(self, now: float, retry_after: float | None) -> float | None:
        """When one request may go during a refusal's pause, to ask if the window ended.

        Only with nobody else on the key, a whole-second (or no) ``Retry-After``,
        and the window's end known to the second only: halfway through the span
        it may end in before the pause does (admitted, a new window began and the
        pause is over; refused, it had not ended, and nobody else pauses longer).
        A server that counts on answer refuses just before its window's end with
        "Retry-After: 1" while its resets put the end up to a second later: every
        worker then waited out the whole next window too, and a run sent every
        other window (0.55 of the limit on the fake clock).
        """
        quota = self.quota
        if (
            not self.adaptive
            or not self._alone_on_refilling_windows()
            or self.rate is not None
            or not quota.headers_seen
            or quota.precise
            or (retry_after is not None and retry_after != int(retry_after))
        ):
            return None
        lo = max(now, quota.end[0])
        if self._paused_until - lo <= 2 * _PROBE_PRECISION_S:
            return None
        return lo + (self._paused_until - lo) / 2

    def _paused_delay(self, now: float) -> float:
        """How long a pause still holds the next send: 0 once its probe is due (see refused)."""
        delay = self._paused_until - now
        if (probe_at := self._pause_probe_at) is None:
            return delay
        return max(min(delay, probe_at - now), 0.0)

    async def _wait_turn(self) -> None:
        waited = False
        started = self._clock()
        while True:
            now = self._clock()
            delay: float | None = 0.0
            if now < self._paused_until:
                delay = self._paused_delay(now)
            elif self.adaptive:
                delay = self._server_delay(now)
            if delay is not None and delay <= 0:
                next_at = self._last_send + self._pace()
                if self._window_n and len(self._sent) == self._window_n:
                    # The oldest of the last n sends must be a whole span ago.
                    next_at = max(next_at, self._sent[0] + self._window_s + self._margin)
                delay = next_at - now
            if self.shared is not None:
                if delay is not None and delay <= 0:
                    delay = await self._shared_turn(now)
                elif self.shared.telling:
                    # Not asking for a turn: what the answers said goes to the others now.
                    await self.shared.tell(
                        limit=self._shared_limit(), fallback_s=self._fallback_s(), now=now
                    )
            if delay is not None and delay <= 0:
                if now < self._paused_until:
                    # The pause's probe goes (see refused); the others wait on. Armed
                    # only now: a probe flag left set would mark a later request.
                    self._pause_probe_at, self._probe_due = None, True
                break
            waited = True
            await self._wait(delay)
        if waited:
            self.stats.waits += 1
            self.stats.waited_s += self._clock() - started
        self._last_send = self._clock()
        if self._window_n:
            self._sent.append(self._last_send)

    async def _shared_turn(self, now: float) -> float:
        """Take this request's turn from the shared budget: 0, or how long to wait first."""
        assert self.shared is not None
        grant = await self.shared.take(
            limit=self._shared_limit(), fallback_s=self._fallback_s(), now=now, rtt_s=self.quota.rtt
        )
        self._grant = grant
        self._grant_ends_at = None if grant.ends_in_s is None else self._clock() + grant.ends_in_s
        return 0.0 if grant.granted else max(grant.wait_s, 0.001)

    def _fallback_s(self) -> float:
        """The window length the shared budget assumes while no one knows the window's end."""
        period = self.quota.period
        return period.hi if period is not None else self._default_pause

    def _shared_limit(self) -> int | None:
        """The limit to tell the shared budget: known, ``None`` before any answer, or -1."""
        limit = self.quota.limit
        if limit is None and self._answered:
            return -1  # answers came, none said a limit: nothing to share but pauses
        return limit

    async def aclose(self) -> None:
        """Let go of the shared budget's connection, if there is one (telling what was learned)."""
        if self.shared is not None:
            await self.shared.aclose(now=self._clock(), limit=self._shared_limit())

    async def _wait(self, delay: float | None) -> None:
        """Sleep ``delay`` seconds, at most :data:`_RECHECK_S` at a time; ``None``: until an answer.

        Sleeping in short steps lets an answer that changes the plan (a window
        that opened before its expected end) be acted on within a step, with no
        task spawned per wait.
        """
        if delay is None:
            await self._changed.wait()
        elif self._in_flight:
            await self._sleep(min(delay, _RECHECK_S))
        else:
            await self._sleep(delay)  # nothing is out: no answer can change the plan


def _below(remaining: int | None, said: int | None, shared_said: int | None) -> bool:
    """An answer's ``remaining`` is below what was said of its window before it went.

    Then the server counted it in that window, unless a later window had already
    counted more than that one had (a new window's count starts again from the
    limit): the caller rules that out first, from the answer's reset. What this
    process had heard (``said``) comes first; for its first request, what the
    shared budget had heard from the others.
    """
    before = said if said is not None else shared_said
    return remaining is not None and before is not None and remaining < before
