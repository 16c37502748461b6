"""The server's rate-limit window, learned from what its answers say.

A throttling server counts requests in windows and says, on each answer, how
many are left (``x-ratelimit-remaining``) and when the window ends
(``x-ratelimit-reset``). Read naively, both mislead:

- **Coarse resets.** NestJS's throttler and most Express limiters send the
  reset as whole seconds left, rounded up: on a 1 s window it always reads
  ``1``. A reset of ``r`` whole seconds only says the window ends somewhere in
  ``(t + r - 1, t + r]``. Waiting "for the reset" waits up to a whole extra
  window.
- **Latency.** The server decides at some moment between the request's send
  and its answer. Read against the answer's arrival, every figure is late.

So :class:`Quota` works in **send time**: the moment a request must be *sent*
to be counted in the next window. If the server decides each request a
roughly constant time after it is sent, a relative reset of ``r`` read on a
request sent at ``s`` puts the next window's first send at ``s + r`` (whole
seconds: in ``(s + r - 1, s + r]``), whatever the latency. Epoch resets give
the end on the server's clock; the decision offset (up to the round trip) is
then unknown, so the end lies in ``(E - rtt, E]``.

What is learned, and how:

- **The current window's end**, as an interval ``(end_lo, end_hi]``: the
  intersection of every reset read in the window; a request counted in the
  window moves ``end_lo`` past its send; the window's start plus the learned
  length bounds it too.
- **Window starts**: a request whose ``remaining`` is at least what the
  server had last said when it was sent (it counts itself, so within one
  window it would be lower) was counted in a newer window: a window began
  between the two requests' sends. Those moments, not the coarse resets, say
  where windows really end.
- **The window's length**, from the starts of windows in a row; or, from a
  reset in whole seconds read less than a second after a window began, that
  reset itself (such servers count in whole seconds), until a measured start
  disagrees. The length carries a window's start over to the next; where
  windows begin at their first request, an assumed length moves only the
  earliest end, never the sure one.
- **Other clients**: requests the server counted that were not ours show up
  as a smaller ``remaining`` (or as a refusal with budget left by our count);
  :attr:`Quota.shared` says so (the limiter then spreads its sends over the
  window instead of bursting). What they spent in one of the last three windows,
  up to half of the limit, is kept back for them at each opening: another
  process that opens its windows later than ours shows only after ours went.
  The run's first burst is halved until an answer says whether anyone else is
  there (two processes started together would both take the whole window).

- **Probes**: the limiter's probe of a window's end (:attr:`Ticket.probe`),
  refused, says only that the window had not ended when it was sent.
- **A window that may have ended unseen**: two answers with the same
  ``remaining``, the later one's request counted after the earlier's, say it
  was counted in a newer window that no jump showed; the window after opens
  with one request rather than a whole quota.

The class is pure bookkeeping: no clock of its own, no sleeping, no I/O; the
:class:`~fetcher.http.limiter.Limiter` drives it and the tests feed it by hand.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
from collections import deque
from dataclasses import dataclass
from typing import Final

__all__ = [
    "PRECISION_S",
    "Quota",
    "ResetReading",
    "Ticket",
    "earliest_end",
    "latest_end",
    "read_reset",
]

#: A window end known to within this many seconds is taken as exact: a refusal's
#: pause may end there rather than at a rounded-up ``Retry-After``.
PRECISION_S: Final = 0.03

#: Windows the others' spending is remembered for (see :meth:`Quota.budget`).
_OTHERS_MEMORY: Final = 3

#: How much shorter than its whole-second reset a window is taken to be able to be:
#: the clocks' and the server's jitter (see :meth:`Quota._assume_whole_seconds`).
_ASSUMED_SLACK_S: Final = 0.002

#: Reset values below this are "seconds from now"; above, epoch seconds.
_EPOCH_THRESHOLD: Final = 1_000_000_000


@dataclass(frozen=True, slots=True)
class ResetReading:
    """One ``x-ratelimit-reset`` value, read.

    Attributes:
        seconds: seconds from the moment it was read until the window ends
            (may be <= 0).
        absolute: the value named a moment (epoch, date), not a span.
        granularity: how far it may have been rounded up: 1.0 for whole
            seconds, 0.0 for values with a fraction.
    """

    seconds: float
    absolute: bool
    granularity: float


def read_reset(value: str, *, now_wall: float) -> ResetReading | None:  # noqa: PLR0911  (one per format)
    """Read an ``x-ratelimit-reset``: delta seconds, epoch (s or ms), an HTTP or ISO date.

    Returns:
        The reading, or ``None`` when the value cannot be understood.
    """
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            return None
        whole = 1.0 if number.is_integer() and not any(c in text for c in ".eE") else 0.0
        if number >= _EPOCH_THRESHOLD * 1000:  # epoch milliseconds
            return ResetReading(number / 1000 - now_wall, absolute=True, granularity=0.0)
        if number >= _EPOCH_THRESHOLD:
            return ResetReading(number - now_wall, absolute=True, granularity=whole)
        return ResetReading(number, absolute=False, granularity=whole)
    try:
        parsed = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        parsed = None
    if parsed is not None:
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return ResetReading(parsed.timestamp() - now_wall, absolute=True, granularity=1.0)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return ResetReading(
        when.timestamp() - now_wall,
        absolute=True,
        granularity=0.0 if when.microsecond else 1.0,
    )


@dataclass(frozen=True, slots=True)
class Ticket:
    """One request's turn: when it was sent and what was known then.

    Attributes:
        seq: its place in the order of sends (1, 2, ...).
        sent_at: monotonic send time.
        window: the number of the window it was sent in, as the quota knew it.
        said_remaining: the lowest ``remaining`` the server had reported for
            that window when it was sent (``None``: nothing reported yet).
        shared_window: the window of the budget shared with other processes
            it was granted in (0: none; see :mod:`fetcher.http.shared`).
        shared_twice: the shared budget charged it to its next window too
            (:attr:`~fetcher.http.shared.Grant.charged_next`).
        shared_said: the lowest ``remaining`` any process on the shared budget
            had reported of its window when it was granted.
        shared_ends_at: the sure end of that window (the caller's clock) when it
            was granted (``None``: none known).
        probe: sent after the window's quota was spent, to find where the window
            ends: refused, it says only that the window had not ended yet.
        page: a page of the run (``False``: the team member list, a key probe,
            sent before any page: its answer is not the run's first, whose
            remaining halves the first burst; the page 1s after it are).
    """

    seq: int
    sent_at: float
    window: int = 0
    said_remaining: int | None = None
    shared_window: int = 0
    shared_twice: bool = False
    shared_said: int | None = None
    shared_ends_at: float | None = None
    probe: bool = False
    page: bool = True


def latest_end(ticket: Ticket, now: float, reset: ResetReading) -> float:
    """The latest moment (send time) the window that answered ``ticket`` may end.

    A relative reset counts from the server's decision, which came no sooner
    than the send; an absolute one names the moment. A sure end, never a guess:
    a request sent after it is counted in a newer window.
    """
    if reset.absolute:
        return now + reset.seconds
    return ticket.sent_at + max(reset.seconds, 0.0)


def earliest_end(ticket: Ticket, now: float, reset: ResetReading) -> float:
    """The earliest moment (send time) the window that answered ``ticket`` may end.

    :func:`latest_end` less the header's rounding: a reset of "1" in whole
    seconds read at ``t`` says the window ends in ``(t, t + 1]``, so a request
    sent at ``t + 0.5`` may be counted in it or in the next.
    """
    return latest_end(ticket, now, reset) - reset.granularity


@dataclass(slots=True)
class _Span:
    """An interval ``(lo, hi]`` of send times."""

    lo: float
    hi: float

    @property
    def width(self) -> float:
        return self.hi - self.lo


class Quota:
    """The server's window: what is left, when it ends, how long windows are.

    Call :meth:`sent` for each request let go (it returns the request's
    :class:`Ticket`), :meth:`observe` with what each answer said, and
    :meth:`roll` when the window's end has passed. :meth:`budget` is what
    may still be sent in the current window, :meth:`next_open` when the next
    one opens.
    """

    def __init__(self, *, keep_back: bool = True) -> None:
        #: Keep back for other clients on the key what they spent of late, and halve
        #: the run's first burst until an answer says whether there are any (see
        #: budget). Off when a shared budget coordinates them.
        self.keep_back = keep_back
        self.limit: int | None = None
        self.window = 0
        self.headers_seen = False
        #: Whether a new window brings a whole fresh quota (a fixed window).
        #: Cleared when a window we opened on that belief refused us early.
        self.refills = True
        self._sent_seq = 0
        self._open_seq = 0  # requests with seq > this were sent in the current window
        self._remaining: int | None = None  # the lowest remaining the server said
        self._said: int | None = None  # the same, but only from the server's mouth
        self._ref_seq = 0  # the latest send that _remaining accounts for
        self._ref_sent_at = -math.inf
        self._assumed = False  # _remaining is an assumed fresh quota, not a report
        self._start: _Span | None = None  # the current window's first send time
        self._prev_start: _Span | None = None
        self._end_lo = -math.inf
        self._end_hi: float | None = None
        self._period: _Span | None = None  # the window's length (see period)
        self._confirmed = False  # an answer was counted in the current window
        self._others = 0
        #: The others of this window were first seen at its first answer, nobody's
        #: before: they may be our own (see :meth:`_take_report`).
        self._others_unsure = False
        self._answers = 0  # answers counted in the current window
        self._last_ours = 0  # requests of ours sent in the window before the current one
        #: What others spent in each of the last windows (see :meth:`budget`).
        self._others_seen: deque[int] = deque(maxlen=_OTHERS_MEMORY)
        #: The first window's first report: (remaining, its request's seq).
        self._first_said: tuple[int, int] | None = None
        self._heard_after_first = False  # an answer to a request sent after it came
        self._first_half_heard = 0
        self._adopted = 0  # ours, sent before the window opened as we knew it, counted in it
        self.rtt = 0.0
        #: Requests sent and not yet answered: seq -> send time (see roll).
        self._out: dict[int, float] = {}
        #: Of those, the ones the current window's budget holds a turn for: sent so
        #: close to the last window's end that it may have counted them (see roll).
        self._held: set[int] = set()
        #: The last answer was counted in a later window than the one its request
        #: was sent in, as this quota knew them (it was in flight when one began).
        self.counted_later = False

    # -- what the limiter asks -----------------------------------------------

    @property
    def end(self) -> tuple[float, float | None]:
        """The current window's end, ``(lo, hi)``: it is after ``lo`` and at or before ``hi``."""
        return self._end_lo, self._end_hi

    @property
    def shared(self) -> bool:
        """Another client spends the same budget (seen in this window or a recent one).

        Not while the only sign is this window's first answer, nobody's before: where
        the server counts a request when it answers it, a burst sent late in a window
        and answered after its end was counted in the next one, and at that window's
        first answer ours look like someone else's. The probe of its end settles it.
        """
        return (self._others > 0 and not self._others_unsure) or any(self._others_seen)

    @property
    def precise(self) -> bool:
        """The current window's end is known to within :data:`PRECISION_S`."""
        return self._end_hi is not None and self._end_hi - self._end_lo <= PRECISION_S

    @property
    def sure_end(self) -> float | None:
        """The latest moment the current window may end, from readings (never a guess)."""
        return None if self._guessed else self._end_hi

    def budget(self) -> int | None:
        """Requests that may still go in the current window (``None``: not known)."""
        if self._remaining is None:
            return None
        left = self._remaining - (self._sent_seq - self._ref_seq) - len(self._held)
        if self.limit is not None:
            # Never more of ours in one window than the limit less the others'
            # (servers that count on answer say `remaining` without what is in flight).
            left = min(left, self.limit - max(self._others, self._kept_back()) - self._ours())
        first = self._first_said
        if self.halving and first is not None:
            # The run's first window, and nothing says yet whether another client
            # spends the key: half of what the first answer left goes at once, the
            # rest once an answer to it says. Two processes started together would
            # otherwise both take the whole window, and half of it be refused.
            said, seq = first
            left = min(left, said - said // 2 - (self._sent_seq - seq))
        return left

    @property
    def period(self) -> _Span | None:
        """The window's length, ``(lo, hi]``: measured, or assumed from whole-second resets.

        An assumed length is set aside while another client spends the key: windows
        opened to the millisecond by it collide with the other's openings (on the
        fake clock, a foreign client's key gave 0.91 of what it left, against 1.00).
        """
        if self._period_assumed and self.shared:
            return None
        return self._period

    @period.setter
    def period(self, value: _Span | None) -> None:
        self._period = value

    @property
    def alone_at_first(self) -> bool:
        """The run's first answer left all the rest of the window to us: nobody spent it before.

        ``remaining`` plus our requests sent up to that one is the whole limit.
        """
        first = self._first_said
        return first is not None and self.limit is not None and sum(first) >= self.limit

    @property
    def period_assumed(self) -> bool:
        """The window's length is assumed from whole-second resets, not measured."""
        return self._period_assumed

    @property
    def halving(self) -> bool:
        """The run's first burst is halved: nothing says yet whether another client is there."""
        return (
            self.keep_back
            and self.window == 0
            and self._first_said is not None
            and not self._heard_after_first
        )

    def _kept_back(self) -> int:
        """What is left to the others in this window before they spend it.

        The most they spent in one of the last windows, up to half of the limit.
        Another process that opens its windows later than ours shows only there:
        taking its share at our opening would have it refused whole (and, never
        seen again, refused every window). Half: two processes that each kept the
        other's whole share would keep the first window's split for the run.
        """
        if self.limit is None or not self._others_seen or not self.keep_back:
            return 0
        return min(max(self._others_seen), self.limit // 2)

    def next_open(self) -> float | None:
        """When the next window surely opens (send time), if known."""
        return self._end_hi

    # -- what the limiter tells ----------------------------------------------

    def holds(self, seq: int) -> bool:
        """Whether the current window's budget holds a turn for request ``seq`` (see roll)."""
        return seq in self._held

    def sent(self, now: float) -> Ticket:
        """Count one request let go now; its ticket goes back with its answer to :meth:`observe`.

        Hand it to :meth:`done` too once the request is over, answered or not.
        """
        self._sent_seq += 1
        self._out[self._sent_seq] = now
        said = None if self._assumed else self._said
        return Ticket(self._sent_seq, now, self.window, said)

    def done(self, ticket: Ticket) -> None:
        """The request of ``ticket`` is over (answered, failed or cancelled)."""
        self._out.pop(ticket.seq, None)
        self._held.discard(ticket.seq)

    def seen(self, now: float, *, in_flight: int) -> Ticket:
        """A ticket for an answer whose request was not let go through :meth:`sent`.

        It is taken as sent now, before the ``in_flight`` requests still out.
        """
        return Ticket(self._sent_seq - in_flight, now, self.window, self._said)

    def roll(self, now: float, *, slack_s: float = 0.0) -> None:
        """The current window's end has passed: the next one opens with a fresh quota.

        Its end is the start plus the learned length, when that is known;
        otherwise the next answer's reset says. After a window opened on that
        belief refused us early (a sliding window, or a server that refills
        slowly) the quota is left unknown until an answer says.

        Requests still out that were sent after the ended window's earliest end,
        less ``slack_s``, may be counted in either window: the time from a send
        to the server's decision varies (a busy event loop, a new connection, a
        network's jitter), and the last ones sent before a sure end land in the
        next window. The new window's budget holds a turn for each until its
        answer says which window counted it (on a loaded machine, 12 sent in the
        last 2 ms of a window, and the next window's whole quota at its opening,
        made 6 refusals).
        """
        assert self._end_hi is not None
        since = self._end_lo - slack_s
        self._held = {seq for seq, sent_at in self._out.items() if sent_at > since}
        # Two answers said the same `remaining`, the later request's counted after
        # the earlier's: it was counted in a newer window, which no jump showed
        # (page 1 of two queries on either side of the server's boundary, both
        # "39 left"). The window thought to end now is one that already had, and
        # a whole quota sent at its "end" would be refused whole: one request goes
        # first, and its answer says what is left.
        #
        # An end that was only guessed (no reading in the window said it) is no
        # window seen to end either: a first answer read late (epoch resets, 0.4 s
        # of a loaded loop) made the guess 0.09 s of a 0.5 s window, and every
        # guessed "end" sent a whole quota, refused whole. One request goes first.
        sure = (not self._suspect or self.precise or not self.keep_back) and not self._guessed
        # It began by now: where windows begin at their first request (NestJS), at
        # the first one sent after this end, not at it; the end projected from an
        # earlier start was early by the margin, and what went then was refused.
        start = _Span(self._end_lo, max(self._end_hi, now))
        if start.lo == -math.inf:
            start.lo = start.hi - (self.period.hi if self.period else 1.0)
        self._begin(start, open_seq=self._sent_seq)
        if self.refills and self.limit is not None and sure:
            self._remaining, self._assumed = self.limit, True
        else:
            self._remaining = None
        self._ref_seq = self._sent_seq
        if self._end_hi is None and (self.period is not None or self._longest_reset > 0):
            # No length learned yet: a window is at least as long as the longest
            # time-to-reset seen (or the length assumed from whole-second resets).
            # Only a guess, until the next reset read says: too early an end is
            # refused and taught; too late would waste a window.
            length = self.period.hi if self.period is not None else self._longest_reset
            self._end_hi = max(start.hi + length, self._end_lo)
            self._guessed = True

    def observe(
        self,
        ticket: Ticket,
        *,
        now: float,
        remaining: int | None,
        limit: int | None,
        reset: ResetReading | None,
        refused: bool = False,
    ) -> None:
        """Learn from one answer to the request of ``ticket``."""
        self._held.discard(ticket.seq)
        self.rtt = (
            now - ticket.sent_at if self.rtt == 0 else 0.9 * self.rtt + 0.1 * (now - ticket.sent_at)
        )
        if limit is not None and limit > 0:
            self.limit = limit
        if remaining is None:
            return
        self.headers_seen = True
        self.counted_later = False
        span = self._reset_span(ticket, now, reset)
        newer = (
            not refused and ticket.said_remaining is not None and remaining >= ticket.said_remaining
        )
        if ticket.window == self.window and newer:
            # A window began between the send that last reported and this one's.
            if self._others_unsure and self._others <= self._last_ours:
                # The one before it ended early, and what looked like the others'
                # could all have been ours of the window before: ours, counted late.
                self._others = 0
            start = _Span(max(self._ref_sent_at, self._end_lo), ticket.sent_at)
            self._begin(start, open_seq=ticket.seq - 1)
            self._confirm()
            self._take_report(ticket, remaining, now)
            self._narrow(span)
            self.counted_later = True
        elif ticket.window == self.window or (
            ticket.window == self.window - 1 and ticket.seq > self._open_seq
        ):
            # Sent in this window, or in flight when it began but decided after the
            # first request it counted (the server decides in order): counted here.
            self._counted_here(ticket, remaining, span, now, refused=refused)
            self.counted_later = ticket.window < self.window
        elif ticket.window < self.window and newer:
            # Sent before we opened this window, counted in it: it opened earlier.
            self.counted_later = True
            self._tighten_start(hi=ticket.sent_at)
            if ticket.seq <= self._open_seq:
                self._adopted += 1  # not yet among the window's own (see _ours)
            if self._remaining is None or self._assumed or remaining <= self._remaining:
                # Its report counts it and every request decided before it.
                self._remaining, self._assumed = remaining, False
                self._ref_seq = max(self._ref_seq, ticket.seq)
                self._ref_sent_at = max(self._ref_sent_at, ticket.sent_at)
            self._narrow(span)
        elif ticket.window == self.window - 1:
            # Counted in the window it was sent in: the current one began after it.
            self._tighten_start(lo=ticket.sent_at)

    # -- internals ------------------------------------------------------------

    def _counted_here(
        self,
        ticket: Ticket,
        remaining: int,
        span: _Span | None,
        now: float,
        *,
        refused: bool,
    ) -> None:
        """An answer to a request sent in the current window, and counted in it."""
        self._end_lo = max(self._end_lo, ticket.sent_at)
        if refused and ticket.probe:
            # A probe of the window's end, refused: the window had not ended when it
            # was sent. That is all it says (it was sent with the quota spent).
            self._narrow(span)
            return
        if refused and not self._confirmed and self._narrowed_by(span):
            # Refused by the window we thought had ended: we opened this one
            # too early. It is no window start to learn the length from.
            # Twice in a row, and windows do not refill at their end (a
            # sliding window): quotas are then taken only from answers.
            self._start = None
            self._early += 1
            if self._early >= 2:
                self.refills = False
        elif refused and self.limit is not None and (self.shared or self._confirmed):
            # Refused in this window (not an early opening) with budget left by our
            # count: the others spent it, all but ours decided before this one.
            before = ticket.seq - 1 - self._open_seq + self._adopted
            self._others = max(self._others, self.limit - max(before, 0))
            self._others_unsure = False  # refused with budget left: not ours counted late
        elif refused and self._assumed and self.limit is not None:
            ours = self._sent_seq - self._open_seq
            last = self._others_seen[-1] if self._others_seen else 0
            if ours < self.limit - last:
                # Refused early in a window we opened expecting a full quota.
                self.refills = False
        if not refused:
            self._confirm()
            self._early = 0
        self._take_report(ticket, 0 if refused else remaining, now, refused=refused)
        self._narrow(span)

    _guessed = False  # the current end is a guess, not a reading
    _period_assumed = False  # the period is the whole-second assumption (_assume_whole_seconds)
    _suspect = False  # this window may have ended unseen (see roll)
    _said_seq = 0  # the request whose answer said the lowest remaining (_said)
    _early = 0  # windows in a row we opened too early
    _longest_reset = 0.0

    def _reset_span(self, ticket: Ticket, now: float, reset: ResetReading | None) -> _Span | None:
        if reset is None:
            return None
        self._longest_reset = max(self._longest_reset, reset.seconds - reset.granularity)
        start = self._start
        if (
            reset.granularity == 1.0
            and not reset.absolute
            and start is not None
            and ticket.sent_at - start.lo < 1.0
        ):
            # Read less than a second after the window began: "r" is its length.
            self._assume_whole_seconds(round(reset.seconds))
        end = latest_end(ticket, now, reset)
        if reset.absolute:
            # The server's moment; it decided up to a round trip after the send.
            return _Span(end - (now - ticket.sent_at) - reset.granularity, end)
        return _Span(end - reset.granularity, end)

    def _assume_whole_seconds(self, seconds: int) -> None:
        """Take the window to be as long as the longest whole-second reset, until shown otherwise.

        A reset of whole seconds rounded up never says more than that the window
        ends within the second, and window starts measured from jumps in
        ``remaining`` are as wide as the gaps between sends, so the length they
        give is known to a second or worse. But such servers count in whole
        seconds (NestJS's ``ttl``, Express's ``windowMs``: a second, a minute),
        and a window read less than a second after it began says its whole
        length: ``ceil(length - elapsed)`` is the length itself when the length is
        whole and ``elapsed < 1``.
        Taken as exact, the length carries each window's start, as narrowed by
        jumps and probes, over to the next, so windows open on time instead of as
        late as the run's first request fell in its own. A window that is longer
        (1.5 s read as "2" is taken as 2: late, never early) costs time; shorter
        shows as a window start that disagrees, and the measured length replaces
        the assumption (see :meth:`_learn_period`).
        """
        if not self.keep_back:
            return  # a budget shared through Redis keeps its own windows (shared.py)
        if seconds < 1 or (self._period is not None and not self._period_assumed):
            return
        if self._period_assumed and self._period is not None and self._period.hi >= seconds:
            return
        self.period = _Span(seconds - _ASSUMED_SLACK_S, float(seconds))
        self._period_assumed = True
        self._project()

    def _narrowed_by(self, span: _Span | None) -> bool:
        """Whether ``span`` puts the window's end before the current interval (an old window)."""
        return span is not None and self._end_hi is not None and span.hi < self._end_lo

    def _take_report(
        self, ticket: Ticket, remaining: int, now: float, *, refused: bool = False
    ) -> None:
        if self._remaining is None or self._assumed or remaining <= self._remaining:
            self._remaining = remaining
        if (
            not refused
            and remaining > 0
            and self._said is not None
            and remaining >= self._said
            and ticket.seq > self._said_seq
        ):
            self._suspect = True  # see roll
        if self._said is None or remaining < self._said:
            self._said, self._said_seq = remaining, ticket.seq
        self._assumed = False
        if ticket.seq > self._ref_seq or self._ref_seq == self._open_seq:
            self._ref_seq = max(self._ref_seq, ticket.seq)
            self._ref_sent_at = max(self._ref_sent_at, ticket.sent_at)
        first = self._first_said
        if first is not None and ticket.seq > first[1] and not self._heard_after_first:
            # An answer (or a refusal) to the first burst's half: once all of it is
            # back, what the others spent meanwhile shows, and the rest may go.
            self._first_half_heard += 1
            self._heard_after_first = self._first_half_heard >= first[0] - first[0] // 2
        if not refused:
            if self.limit is not None:
                self._count_others(ticket, remaining, self.limit)
            self._answers += 1
        del now

    def _count_others(self, ticket: Ticket, remaining: int, limit: int) -> None:
        """What an admitted answer says the others spent of the current window."""
        if self.window > 0:
            # Counted before this answer, less every request of ours sent in the
            # window by now: the rest were someone else's.
            others = limit - remaining - self._ours()
            if others > self._others:
                if self._others == 0:
                    self._others_unsure = self._answers == 0 and not any(self._others_seen)
                self._others = others
            if self._others > self._last_ours:
                self._others_unsure = False  # more than ours could have been: theirs
        elif self._first_said is None:
            if ticket.page:  # a key probe's answer is not the run's first
                # The first window may have been spent before the run: only what
                # others spend after our first answer in it is theirs.
                self._first_said = (remaining, ticket.seq)
                # The run's lone first request (a paginator's page 1): what follows
                # is its first burst (see budget). With others of ours out, no.
                self._heard_after_first = ticket.seq != self._sent_seq
        else:
            said, seq = self._first_said
            self._others = max(self._others, said - remaining - (self._sent_seq - seq))

    def _ours(self) -> int:
        """Requests of ours sent so far that the current window may have counted."""
        return self._sent_seq - self._open_seq + self._adopted

    def _narrow(self, span: _Span | None) -> None:
        if span is None:
            return
        if self._guessed:
            self._end_hi, self._guessed = None, False
        lo = max(self._end_lo, span.lo)
        hi = span.hi if self._end_hi is None else min(self._end_hi, span.hi)
        if lo > hi:
            # The readings disagree (jitter, or a window we misplaced): the latest wins.
            lo, hi = span.lo, span.hi
        self._end_lo, self._end_hi = lo, hi

    def _begin(self, start: _Span, *, open_seq: int) -> None:
        """A new window: its first send time, its quota unknown, its end projected."""
        if self._start is not None and self._confirmed:
            self._prev_start = self._start
        self._last_ours = open_seq - self._open_seq  # sent in the window that ends
        self.window += 1
        start.lo = min(start.lo, start.hi)
        self._start = start
        self._confirmed = False
        self._open_seq = open_seq
        self._remaining = None
        self._said = None
        self._said_seq = 0
        self._suspect = False
        self._assumed = False
        self._others_seen.append(self._others)
        self._others = 0
        self._others_unsure = False
        self._answers = 0
        self._end_lo, self._end_hi = start.hi, None
        self._guessed = False
        self._adopted = 0
        self._project()

    def _confirm(self) -> None:
        """An answer counted in the current window: it is real, and its start teaches the length."""
        if self._confirmed:
            return
        self._confirmed = True
        self._learn_period()

    def _learn_period(self) -> None:
        earlier, later = self._prev_start, self._start
        if earlier is None or later is None or not self._confirmed:
            return
        sample = _Span(max(later.lo - earlier.hi, 0.0), later.hi - earlier.lo)
        if sample.hi < self._longest_reset:
            # Shorter than a time-to-reset seen: no window, but `remaining`
            # rising as a sliding window frees slots. Nothing to learn.
            return
        if self.period is None:  # none yet, or an assumed one set aside (see period)
            self.period, self._period_assumed = sample, False
            return
        lo, hi = max(self.period.lo, sample.lo), min(self.period.hi, sample.hi)
        # Disagreeing samples (a skipped window, a changed limit, a wrong assumption):
        # start again from this one.
        if lo > hi:
            self.period, self._period_assumed = sample, False
        else:
            self.period = _Span(lo, hi)

    def _project(self) -> None:
        if self._start is None or self.period is None:
            return
        if self._period_assumed:
            # An assumed length only moves the earliest end: the latest stays what
            # readings say. Where a window begins at its first request (NestJS), it
            # began when ours *arrived*, after the start we know of, so the start's
            # upper bound plus the length is no sure end (6 of 20 refused, measured).
            lo = self._start.lo + self.period.lo
            if self._end_hi is None or self._guessed or lo <= self._end_hi:
                self._end_lo = max(self._end_lo, lo)
                if self._guessed and self._end_hi is not None:
                    self._end_hi = max(self._end_hi, lo)
            return
        self._narrow(_Span(self._start.lo + self.period.lo, self._start.hi + self.period.hi))

    def _tighten_start(self, *, lo: float | None = None, hi: float | None = None) -> None:
        start = self._start
        if start is None:
            return
        new_lo = start.lo if lo is None else max(start.lo, lo)
        new_hi = start.hi if hi is None else min(start.hi, hi)
        if new_lo > new_hi:
            return
        self._start = _Span(new_lo, new_hi)
        self._learn_period()
        self._project()
