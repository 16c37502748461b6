"""The limiter against the throttlers users meet, whole runs on a fake clock.

Each test runs hundreds of requests through one :class:`~fetcher.http.limiter.Limiter`
against :class:`tests.throttler.Throttler` (virtual time: milliseconds of real
time, the same figures every run) and pins a rule of the limiter: coarse
resets, the window learned, refusals, another client on the key.
"""

from __future__ import annotations

import dataclasses

import anyio
import pytest

from fetcher.http.limiter import Limiter
from fetcher.http.quota import Quota, Ticket, _Span, read_reset
from fetcher.http.shared import Grant
from tests.fakes import FakeClock
from tests.throttler import Outcome, Throttler, drive


def make(clock: FakeClock, **options: object) -> Limiter:
    options.setdefault("max_in_flight", 16)
    options.setdefault("max_auto_in_flight", 32)
    return Limiter(clock=clock, wall_clock=clock.wall, sleep=clock.sleep, **options)  # type: ignore[arg-type]


async def sent(limiter: Limiter) -> Ticket:
    """One request let go now (its answer handed back by the test)."""
    async with limiter.slot() as ticket:
        return ticket


async def run(server: Throttler, n: int, *, latency_s: float = 0.15) -> tuple[float, int, Limiter]:
    clock = FakeClock()
    limiter = make(clock)
    async with clock.running():
        outcome = await drive(limiter, server, clock, n, latency_s=latency_s)
    return outcome.elapsed, outcome.refused, limiter


def test_whole_second_resets_are_read_as_intervals() -> None:
    """A reset of whole seconds is rounded up: it is read with a granularity of one second."""
    now = 1_700_000_000.0
    assert _reading("1", 0.0) == (1.0, False, 1.0)
    assert _reading("0.734", 0.0) == (0.734, False, 0.0)
    assert _reading("1700000003", now) == (3.0, True, 1.0)
    assert _reading("1700000003.250", now) == (3.25, True, 0.0)
    assert _reading("1700000003250", now) == (3.25, True, 0.0)  # epoch ms
    assert _reading("Tue, 14 Nov 2023 22:13:23 GMT", now) == (3.0, True, 1.0)


def _reading(value: str, now: float) -> tuple[float, bool, float]:
    reading = read_reset(value, now_wall=now)
    assert reading is not None
    return (round(reading.seconds, 6), reading.absolute, reading.granularity)


def rounded(end: tuple[float, float | None]) -> tuple[float, float | None]:
    lo, hi = end
    return round(lo, 6), None if hi is None else round(hi, 6)


def test_a_coarse_reset_bounds_the_end_from_the_send_time() -> None:
    """Reset "1" on a request sent at s: the window ends in (s, s + 1], whatever the latency."""
    quota = Quota()
    ticket = quota.sent(10.0)
    quota.observe(ticket, now=10.4, remaining=5, limit=10, reset=read_reset("1", now_wall=0.0))
    assert rounded(quota.end) == (10.0, 11.0)
    later = quota.sent(10.6)
    quota.observe(later, now=10.9, remaining=4, limit=10, reset=read_reset("1", now_wall=0.0))
    # Counted in the same window: it ends after 10.6, and by 11.0.
    assert rounded(quota.end) == (10.6, 11.0)


def test_a_remaining_that_rose_marks_a_window_start() -> None:
    """An answer with more left than the server had said when it was sent is a new window's."""
    quota = Quota()
    first = quota.sent(0.0)
    quota.observe(first, now=0.1, remaining=0, limit=10, reset=read_reset("5", now_wall=0.0))
    later = quota.sent(0.8)  # sent while the server had said 0 were left
    assert later.said_remaining == 0
    quota.observe(later, now=0.9, remaining=9, limit=10, reset=read_reset("1", now_wall=0.0))
    assert quota.window == 1
    # The first window was spent before our first answer: no one else's share to
    # keep back (it may have been a run before ours).
    assert quota.budget() == 9


@pytest.mark.parametrize("phase", [0.0, 0.37, 1.3])
async def test_whole_second_resets_run_at_the_limit(phase: float) -> None:
    """20 per 2 s in whole-second resets, any phase: within 3% of fractional resets, <= 1% refused.

    Reading "reset: 2" or "1" as the moment the window ends waits up to a second
    too long at every window (the 0.56 of the limit users measured); read as an
    interval and narrowed by where `remaining` rose, the window's end is found.
    The refusals are the probes of where a window ends (at most one a window,
    and only while the end is known to worse than 60 ms).
    """
    coarse, refused, limiter = await run(Throttler(20, 2.0, phase_s=1000 + phase), 600)
    exact, _, _ = await run(Throttler(20, 2.0, phase_s=1000 + phase, reset="fraction"), 600)
    assert refused <= 0.01 * 600
    assert refused <= limiter.stats.probes
    assert coarse <= exact * 1.03
    period = limiter.quota.period  # the window's length, learned (bounds, not a guess)
    assert period is not None and period.lo <= 2.0 <= period.hi


async def test_whole_second_resets_on_a_one_second_window_never_wait_a_window_more() -> None:
    """40 per 1 s, reset always "1": never a whole window idle, a probe's refusal at most."""
    server = Throttler(40, 1.0, phase_s=1000.6)
    elapsed, refused, limiter = await run(server, 400)
    assert refused <= min(limiter.stats.probes, 0.01 * 400)
    # 400 requests need 10 windows; one idle window per window would double it.
    assert elapsed <= 10 * 1.0 * 1.15
    assert server.most_in_any_window() <= 40


async def test_the_window_is_never_exceeded_whatever_the_format() -> None:
    """Every reset format, fixed or sliding windows: no window holds more than the limit."""
    for server in (
        Throttler(20, 2.0, phase_s=1000.2),
        Throttler(20, 2.0, phase_s=1000.2, reset="fraction"),
        Throttler(20, 2.0, phase_s=1000.2, reset="epoch"),
        Throttler(20, 2.0, sliding=True),
    ):
        _, refused, _ = await run(server, 200)
        assert server.most_in_any_window() <= 20
        assert refused <= 4, server  # 2%


async def test_after_a_refusal_the_pause_ends_at_the_learned_window_end() -> None:
    """Refused with Retry-After: 1 when the window is known to end in 0.2 s: paused 0.2 s."""
    clock = FakeClock()
    limiter = make(clock, margin_s=0.0)
    headers = {"x-ratelimit-limit": "10", "x-ratelimit-remaining": "0",
               "x-ratelimit-reset": "0.200"}  # fmt: skip
    async with clock.running():
        async with limiter.slot() as first, limiter.slot() as second:
            pass
        limiter.observe(200, headers, first)
        limiter.refused(1.0, headers, second)
        waiting = limiter.waiting_until
    assert waiting == pytest.approx(1000.2)


async def test_another_client_on_the_key_is_shared_with_not_backed_off_from() -> None:
    """A foreign client spends half of each window: fetcher takes most of the rest, few refused.

    An adaptive pace driven by refusals fell to one request a second and never
    came back; following `remaining`, the other client's requests only leave
    less to take.
    """
    server = Throttler(20, 2.0, phase_s=1000.5, foreign_per_window=10)
    clock = FakeClock()
    limiter = make(clock)
    async with clock.running():
        outcome = await drive(limiter, server, clock, 200, latency_s=0.1, foreign_until=1e9)
    left_per_s = (20 - 10) / 2.0
    assert 200 / outcome.elapsed >= 0.85 * left_per_s
    assert outcome.refused <= 0.05 * 200
    assert limiter.interval_s < 0.05  # no crawl


async def test_refusals_with_headers_set_no_lasting_pace() -> None:
    """After refusals on a server that sends headers, full speed in the next window."""
    clock = FakeClock()
    limiter = make(clock)
    ticket = Ticket(seq=0, sent_at=clock())
    for _ in range(5):
        limiter.refused(1.0, {"x-ratelimit-limit": "20", "x-ratelimit-remaining": "0",
                              "x-ratelimit-reset": "1"}, ticket)  # fmt: skip
    assert limiter.interval_s == 0.0


def test_requests_in_flight_when_a_window_began_are_counted_once() -> None:
    """A burst that straddles a window's end: the new window's budget counts each request once.

    40 per window. Ten requests early in a window leave 30; then 30 go together
    near its end: 5 are counted in it, 25 in the next, where the sixth shows
    `remaining` rising. The next window then has 15 left: every request decided
    after the first one counted in it was counted in it too (the server decides in
    order), whether or not its `remaining` happens to be above what was said.
    """
    one = read_reset("1", now_wall=0.0)
    quota = Quota()
    for i in range(10):
        ticket = quota.sent(0.0)
        quota.observe(ticket, now=0.15 + i / 1000, remaining=39 - i, limit=40, reset=one)
    burst = [quota.sent(0.9 + i / 1000) for i in range(30)]
    assert burst[0].said_remaining == 30
    remaining = 29
    for i, ticket in enumerate(burst):
        if i == 5:
            remaining = 39  # the first counted in the new window
        quota.observe(ticket, now=1.05 + i / 1000, remaining=remaining, limit=40, reset=one)
        remaining -= 1
    assert quota.window == 1
    assert quota.budget() == 15


async def two_processes(server: Throttler, n: int, *, latency_s: float) -> list[Outcome]:
    """Two limiters (two processes, no shared limiter) fetch ``n`` pages each from one key."""
    clock = FakeClock()
    limiters = [make(clock), make(clock)]
    outcomes: list[Outcome] = []

    async def one(limiter: Limiter) -> None:
        outcomes.append(
            await drive(limiter, server, clock, n, latency_s=latency_s, first_alone=True)
        )

    async with clock.running(), anyio.create_task_group() as tg:
        for limiter in limiters:
            tg.start_soon(one, limiter)
    return outcomes


async def test_two_processes_on_one_key_split_it_rather_than_collide_at_each_opening() -> None:
    """Each keeps the other's share back for it: few refused, and both finish together.

    Two exports on one key without --shared-limiter see each other only as a
    smaller ``remaining``. Both took the whole quota at each window's opening,
    and the one whose window estimate opened later was refused whole, every
    window (38-53 of 200 refused at these phases). Now what others spent in one
    of the last three windows (up to half of the limit) is kept back for them,
    a refusal in a window we are surely in counts as theirs, and the run's first
    burst is halved until all of its answers say whether anyone else is there.
    """
    for phase in (1000.37, 1000.0, 1001.2):
        server = Throttler(20, 2.0, phase_s=phase)
        outcomes = await two_processes(server, 100, latency_s=0.1)
        refused = sum(o.refused for o in outcomes)
        assert refused <= 0.04 * 200, (phase, refused)
        slower, faster = max(o.elapsed for o in outcomes), min(o.elapsed for o in outcomes)
        assert slower <= 1.15 * faster, (phase, slower, faster)
        assert 200 / 20 * 2.0 / slower >= 0.9, (phase, slower)


def test_the_others_share_is_kept_back_for_three_windows_at_most_half() -> None:
    """A new window's budget keeps back what others spent in a recent window, at most half."""
    one = read_reset("1", now_wall=0.0)
    quota = Quota()
    quota.observe(quota.sent(0.0), now=0.1, remaining=9, limit=10, reset=one)  # 9 left
    quota.roll(1.0)  # a window, ours alone: nothing to keep back
    assert quota.budget() == 10
    first = quota.sent(1.0)
    quota.observe(first, now=1.1, remaining=9, limit=10, reset=one)
    ours = [quota.sent(1.1) for _ in range(2)]
    for i, ticket in enumerate(ours):
        # Others spent 7 meanwhile: 10 - 3 of ours - 7 = 0 left.
        quota.observe(ticket, now=1.2 + i / 100, remaining=1 - i, limit=10, reset=one)
    assert quota.budget() == 0
    for window in range(3):
        quota.roll(2.0 + window)
        # They spent 7; half of the limit (5) is kept back for them, for three windows,
        # though they spend nothing in these.
        assert quota.budget() == 10 - 5, window
        quota.observe(quota.sent(2.0 + window), now=2.1 + window, remaining=9, limit=10, reset=one)
    quota.roll(5.0)
    assert quota.budget() == 10  # not seen for three windows: the whole quota again


async def test_a_foreign_client_spending_evenly_never_costs_a_whole_window() -> None:
    """Another client spends half of each window evenly: every window gives us what is left.

    A request sent just before a window's end, refused there (the other client
    took the window's last slot), paused every worker until the end of the
    window that had just begun, and that window was lost: every other window
    admitted 1-3 of ours (0.78 of what is left).
    """
    server = Throttler(40, 1.0, phase_s=1000.8, foreign_per_window=20)
    clock = FakeClock()
    limiter = make(clock)
    async with clock.running():
        outcome = await drive(
            limiter, server, clock, 200, latency_s=0.15, foreign_until=1e9, first_alone=True
        )
    left_per_s = (40 - 20) / 1.0
    assert 200 / outcome.elapsed >= 0.95 * left_per_s
    assert outcome.refused <= 0.05 * 200


async def test_a_refusal_of_a_request_sent_in_an_ended_window_pauses_no_one() -> None:
    """Refused by the window it was sent in, which has ended since: it says nothing of this one."""
    clock = FakeClock()
    limiter = make(clock, margin_s=0.0)
    one = {"x-ratelimit-limit": "10", "x-ratelimit-remaining": "5", "x-ratelimit-reset": "1"}
    old = await sent(limiter)
    limiter.observe(200, one, old)
    clock.now += 0.3
    late = await sent(limiter)  # sent in the window the first answer told of
    clock.now += 0.9
    fresh = await sent(limiter)  # in a newer window: remaining rose
    limiter.observe(200, {**one, "x-ratelimit-remaining": "9"}, fresh)
    assert late.window < limiter.quota.window
    limiter.refused(1.0, {**one, "x-ratelimit-remaining": "0"}, late)
    assert limiter.waiting_until is None


async def test_a_refusal_pauses_to_the_sure_end_not_a_rounded_up_retry_after() -> None:
    """Retry-After "1" read when the window surely ends 0.2 s later: the pause ends then."""
    clock = FakeClock()
    limiter = make(clock, margin_s=0.0)
    one = {"x-ratelimit-limit": "10", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "1"}
    first = await sent(limiter)
    limiter.observe(200, {**one, "x-ratelimit-remaining": "9"}, first)  # ends by 1000 + 1
    clock.now += 0.8
    late = await sent(limiter)
    limiter.refused(1.0, one, late)
    until = limiter.waiting_until
    assert until is not None and until == pytest.approx(1001.0)


# -- where a whole-second window ends: the assumed length, probes, the first window ---------


def first_hits(server: Throttler) -> list[float]:
    """For each window with an admitted hit, how long after its start the first came."""
    firsts: dict[float, float] = {}
    for t in server.hits:
        start = server._window(t)[0]
        firsts[start] = min(firsts.get(start, t), t)
    return [firsts[start] - start for start in sorted(firsts)]


@pytest.mark.parametrize("into", [0.1, 0.35, 0.6, 0.85])
async def test_whole_second_windows_open_on_time_once_probed(into: float) -> None:
    """40 per 1 s, reset always "1": after a few windows each opens within 0.1 s of its start.

    No request of a run that sends each window's quota at its opening falls near
    the window's end, so "1" and `remaining` never said where it is: every
    window opened as late as the run's first request fell in its own (0.1-0.85
    s here; 0.7 s, 0.81 of the limit, measured on the simulator). One probe a
    window, halfway through the span the end may be in, halves that span; the
    length assumed from the whole-second reset carries it over to the next.
    """
    server = Throttler(40, 1.0, phase_s=1000 - into)  # the run starts `into` its window
    clock = FakeClock()
    limiter = make(clock, max_auto_in_flight=64)
    async with clock.running():
        outcome = await drive(limiter, server, clock, 600, first_alone=True, first=2)
    lags = first_hits(server)
    decided = 0.15 / 2  # the throttler decides half a latency after the send
    assert max(lags[-6:]) <= decided + 0.1, lags
    assert outcome.refused <= min(limiter.stats.probes, 0.01 * 600)
    assert server.most_in_any_window() <= 40


async def test_the_first_window_sends_what_it_has_left_at_once() -> None:
    """Page 1 of two queries, then 38 at once: the first window is used whole, not 34 of 40.

    Held at 16 in flight, the first window's 38 went as 16, 16 and 6, a round
    trip apart: half a second into a 1 s window the last 6 missed it, and a
    200-page run at 40 a second took a whole window more.
    """
    server = Throttler(40, 1.0, phase_s=1000 - 0.5)
    clock = FakeClock()
    limiter = make(clock, max_auto_in_flight=64)
    async with clock.running():
        await drive(limiter, server, clock, 200, first_alone=True, first=2)
    assert [t for t in server.hits if t < 1000.5] == pytest.approx([1000.075] * 2 + [1000.225] * 38)


async def test_the_first_windows_slots_are_lent_and_taken_back() -> None:
    """A first window read as "1" may send what it has left at once; after it, 16 in flight again.

    A 10 s window read near its end says "1" too: the slots raised for the rest
    of that window must not stay raised once answers show a longer window.
    """
    clock = FakeClock()
    limiter = make(clock, max_in_flight=16, max_auto_in_flight=32)
    headers = {"x-ratelimit-limit": "40", "x-ratelimit-reset": "1"}
    async with clock.running():
        first = await sent(limiter)
        limiter.observe(200, {**headers, "x-ratelimit-remaining": "39"}, first)
        assert limiter.max_in_flight == 32  # lent: the window ends within a second
        clock.now += 0.5
        later = await sent(limiter)  # still counted in it: it ends after 1000.5
        limiter.observe(200, {**headers, "x-ratelimit-remaining": "38"}, later)
        clock.now += 0.6
        fresh = await sent(limiter)  # the next window, read just after it began
        limiter.observe(
            200, {**headers, "x-ratelimit-remaining": "39", "x-ratelimit-reset": "10"}, fresh
        )
        async with limiter.slot():
            pass  # a request ends: the lent slots are taken back as they come free
    assert limiter.quota.period is not None and limiter.quota.period.hi == 10.0
    assert limiter.max_in_flight == 16


async def test_nothing_goes_on_a_window_s_quota_after_its_end() -> None:
    """Quota left at the window's latest end: the next request waits for the margin's roll.

    Sent between the end and the end plus the margin, a request was charged to
    what the old window had left, but the server counted it in the next one,
    whose whole quota then went at the roll as well: with the first burst's
    second half late (a busy event loop), 15 such and the next window's 40 gave
    4 refusals in CI.
    """
    clock = FakeClock()
    limiter = make(clock, margin_s=0.02)
    headers = {"x-ratelimit-limit": "40", "x-ratelimit-reset": "0.400"}
    async with clock.running():
        first = await sent(limiter)
        clock.now += 0.1
        limiter.observe(200, {**headers, "x-ratelimit-remaining": "39"}, first)
        assert limiter.quota.budget() == 20  # the first burst's half: quota left
        clock.now += 0.305  # 5 ms past the window's end (send time 1000.4)
        late = await sent(limiter)
    assert late.sent_at == pytest.approx(1000.42)  # at the roll, not at once
    assert late.window == first.window + 1
    assert limiter.quota.budget() == 39


def test_requests_sent_at_a_window_s_end_hold_a_turn_in_the_next_until_answered() -> None:
    """Still out at the roll, sent near the end: the next window keeps a turn for each.

    The time from a send to the server's decision varies (a loaded loop, a new
    connection): of requests sent in the last 2 ms before a sure end, some were
    counted in the next window, whose whole quota had gone at its opening.
    """
    quota = Quota()
    first = quota.sent(1000.0)
    fraction = read_reset("0.500", now_wall=0.0)
    quota.observe(first, now=1000.1, remaining=39, limit=40, reset=fraction)
    quota.done(first)
    early = quota.sent(1000.2)  # well before the end: counted in its window
    late = [quota.sent(1000.495) for _ in range(3)]  # 5 ms before it
    quota.roll(1000.52, slack_s=0.02)
    assert quota.budget() == 40 - 3  # the early one is not held
    # One answer says the window that ended counted it; another, that the new one did.
    old_window = read_reset("0.005", now_wall=0.0)
    quota.observe(late[0], now=1000.6, remaining=37, limit=40, reset=old_window)
    assert quota.budget() == 40 - 2
    new_window = read_reset("0.499", now_wall=0.0)
    quota.observe(late[1], now=1000.6, remaining=39, limit=40, reset=new_window)
    assert quota.budget() == 39 - 1  # its report counts it; the last is still held
    quota.done(late[2])  # failed, never answered: no longer held
    assert quota.budget() == 39
    del early


def test_a_window_opened_at_a_guessed_end_opens_with_one_request() -> None:
    """No reading said where the window ends: at the guess, one request asks first.

    A first answer read late (an epoch reset, 0.4 s into a loaded loop) said 0.1 s
    of the window was left: the length guessed from it was 0.1 s of 0.5 s, and
    each guessed end sent a whole quota, refused whole.
    """
    quota = Quota()
    first = quota.sent(1000.0)
    epoch = read_reset("1700000000.600", now_wall=1_700_000_000.5)
    quota.observe(first, now=1000.4, remaining=39, limit=40, reset=epoch)
    quota.done(first)
    quota.roll(1000.5)  # a read end: the next window's whole quota
    assert quota.budget() == 40
    assert quota.sure_end is None  # its end only guessed, from the 0.1 s left
    quota.roll(quota.end[1] or 0.0)
    assert quota.budget() is None  # unknown until an answer says


@pytest.mark.parametrize("reset", ["fraction", "epoch"])
async def test_requests_slow_to_reach_the_server_move_no_window_end_early(reset: str) -> None:
    """One request in four takes 120 ms more to reach the server: none is refused.

    Its reading puts the window's end 120 ms early in send time for the other
    three, which then went at that "end", landed in the full window, and were
    refused: the wait after an end grows to the spread of the round trips.
    """
    server = Throttler(40, 1.0, phase_s=1000 - 0.3, reset=reset)  # type: ignore[arg-type]
    clock = FakeClock()
    limiter = make(clock)
    async with clock.running():
        outcome = await drive(
            limiter,
            server,
            clock,
            400,
            first_alone=True,
            delayed=lambda ticket: 0.12 * (ticket.seq % 4 == 0),
        )
    assert outcome.refused == 0
    assert server.most_in_any_window() <= 40
    # Still at the limit: 8.8 s (8.9 s with epoch resets) with no delays, 0.1-0.2 s more.
    assert outcome.elapsed <= 9.2


def test_a_window_opened_after_its_start_could_be_is_projected_from_its_opening() -> None:
    """Rolled 20 ms after the last end, the new window is taken to begin by the roll.

    Where windows begin at their first request (NestJS), the window opened at the
    roll began when the first request sent then arrived, not at the last end: an
    end projected from the last end was early by the margin and the send's delay,
    and on a loaded machine the next window's first six were refused.
    """
    quota = Quota()
    first = quota.sent(1000.0)
    quota.observe(first, now=1000.1, remaining=39, limit=40, reset=read_reset("0.500", now_wall=0))
    quota.done(first)
    quota.roll(1000.52)
    lo, hi = quota.end
    assert lo == pytest.approx(1000.52)
    assert hi == pytest.approx(1001.02)  # not 1001.0


class _SharedSpy:
    """A shared budget that grants every turn and keeps what the limiter reports to it."""

    telling = False

    def __init__(self) -> None:
        self.ends: list[float | None] = []

    async def take(self, **_: object) -> Grant:
        return Grant(granted=True, wait_s=0.0, window=1)

    def saw(self, window: int, *, ends_at: float | None, **_: object) -> None:
        self.ends.append(ends_at)

    def pause(self, seconds: float) -> None:
        pass


async def test_the_end_told_to_the_shared_budget_carries_the_round_trips_spread() -> None:
    """With --shared-limiter, a window's end is told to the others with the same wait.

    The others' requests may reach the server sooner after their sends than this
    process's did: the end told is the reading's, plus the margin or the spread of
    this process's round trips, whichever is wider, as its own roll waits.
    """
    spy = _SharedSpy()
    clock = FakeClock()
    limiter = make(clock, margin_s=0.02, shared=spy)
    headers = {"x-ratelimit-limit": "40", "x-ratelimit-remaining": "30", "x-ratelimit-reset": "1"}
    async with clock.running():
        quick, slow = await sent(limiter), await sent(limiter)
        clock.now += 0.1
        limiter.observe(200, headers, quick)
        clock.now += 0.2
        limiter.observe(200, {**headers, "x-ratelimit-remaining": "29"}, slow)
    # Both sent at 1000.0 with "1" left: the end by 1001.0, plus 0.02, then plus 0.2.
    assert spy.ends == [pytest.approx(1001.02), pytest.approx(1001.2)]


def test_a_whole_second_reset_read_just_after_a_start_is_taken_as_the_length() -> None:
    """A reset of "2" read less than a second after a window began: its length, 2 s, assumed."""
    one, two = read_reset("1", now_wall=0.0), read_reset("2", now_wall=0.0)
    quota = Quota()
    quota.observe(quota.sent(0.0), now=0.1, remaining=19, limit=20, reset=one)
    quota.observe(quota.sent(0.5), now=0.6, remaining=18, limit=20, reset=one)
    assert quota.period is None  # the first window: where it began is not known
    quota.roll(1.01)  # it began after 0.5 (still counted) and by 1.0
    quota.observe(quota.sent(1.02), now=1.12, remaining=19, limit=20, reset=two)
    assert quota.period is not None and quota.period_assumed
    assert (quota.period.lo, quota.period.hi) == pytest.approx((1.998, 2.0))


def test_two_answers_with_the_same_remaining_open_the_next_window_with_one_request() -> None:
    """Page 1 of two queries both "39 left": the second was counted in a newer window.

    With hits counted when answered, two requests sent together on either side
    of the server's boundary both say 39, `remaining` never jumps, and the end
    read from the first is that of a window already over: a whole quota sent
    there was refused whole (41 of 79 in one run). One request goes first.
    """
    one = read_reset("1", now_wall=0.0)

    def after_two(second_says: int) -> Quota:
        quota = Quota()
        a, b = quota.sent(0.0), quota.sent(0.001)
        quota.observe(a, now=0.15, remaining=39, limit=40, reset=one)
        quota.observe(b, now=0.2, remaining=second_says, limit=40, reset=one)
        quota.roll(1.0)
        return quota

    assert after_two(38).budget() == 40  # one window: a fresh quota at its end
    assert after_two(39).budget() is None  # unknown until an answer says


async def test_a_refused_probe_pauses_no_one_and_is_nobody_elses() -> None:
    """The quota spent, one probe goes halfway through the span the window ends in.

    Refused, it says the window had not ended: it pauses no one (every worker
    waits for the window's end anyway) and counts no other client.
    """
    clock = FakeClock()
    limiter = make(clock, margin_s=0.0)

    def says(remaining: int) -> dict[str, str]:
        return {"x-ratelimit-limit": "2", "x-ratelimit-reset": "1",
                "x-ratelimit-remaining": str(remaining)}  # fmt: skip

    async with clock.running():
        limiter.observe(200, says(1), await sent(limiter))  # the first window ends by 1001
        clock.now += 0.3
        limiter.observe(200, says(0), await sent(limiter))  # it had not ended at 1000.3
        clock.now = 1001.0
        limiter.observe(200, says(1), await sent(limiter))  # the next: "1" read 0.7 s in
        limiter.observe(200, says(0), await sent(limiter))
        period = limiter.quota.period
        assert period is not None and period.hi == 1.0  # assumed from the reset
        lo, hi = limiter.quota.end
        assert hi is not None and (lo, hi) == pytest.approx((1001.298, 1002.0))
        with anyio.fail_after(5.0):
            probe = await sent(limiter)  # the quota spent: only the probe goes
    assert probe.probe
    assert probe.sent_at == pytest.approx((lo + hi) / 2)  # halfway (no probe refused yet)
    limiter.refused(1.0, says(0), probe)
    assert not limiter.quota.shared
    assert limiter.quota.end[0] == pytest.approx(probe.sent_at)  # it had not ended then
    until = limiter.waiting_until  # held for the window's end, not the Retry-After
    assert until is not None and until == pytest.approx(1002.0)


def test_a_key_probe_is_not_the_runs_first_answer() -> None:
    """The team member list asked first (a key probe): page 1's answer starts the first burst.

    Taken as the run's lone first request, the probe's answer halved the burst
    after page 1 until every answer to its first half was back, a round trip
    more: the dlt source, which probes the key before any page, lost the first
    window's quota to the next window (0.76 of the limit).
    """
    one = read_reset("1", now_wall=0.0)

    def after_page_1(*, probe_is_a_page: bool) -> Quota:
        quota = Quota()
        probe = quota.sent(0.0)
        if not probe_is_a_page:
            probe = dataclasses.replace(probe, page=False)
        quota.observe(probe, now=0.15, remaining=39, limit=40, reset=one)
        first, second = quota.sent(0.16), quota.sent(0.16)
        quota.observe(first, now=0.31, remaining=37, limit=40, reset=one)
        del second
        return quota

    assert after_page_1(probe_is_a_page=True).halving  # the old reading: a halved burst
    assert not after_page_1(probe_is_a_page=False).halving


def test_a_length_measured_while_the_assumed_one_is_set_aside_is_a_measured_one() -> None:
    """Another client on the key sets the assumed length aside; one measured then is kept.

    It was stored still marked as assumed, so the period stayed hidden while the
    key was shared, and afterwards moved only the earliest end, as an assumed one.
    """
    quota = Quota()
    quota._assume_whole_seconds(2)  # the state under test, set by hand
    quota._others = 3  # another client seen in this window
    assert quota.period is None  # the assumption, set aside
    quota._prev_start, quota._start = _Span(0.0, 0.1), _Span(1.9, 2.0)
    quota._confirmed = True
    quota._learn_period()
    assert not quota.period_assumed
    assert quota.period is not None and (quota.period.lo, quota.period.hi) == pytest.approx(
        (1.8, 2.0)
    )


@pytest.mark.parametrize("into", [0.6, 0.7, 0.8, 0.9, 0.95])
async def test_a_server_counting_on_answer_has_our_late_counted_burst_taken_for_ours(
    into: float,
) -> None:
    """Counted when answered, our first burst falls in the next window: not someone else's.

    The server checks a request on arrival against the hits counted so far and
    counts it when it answers (the simulator's ``rate_count_on="answer"``). A run
    that starts late in a window sends its first burst after page 1's answer; the
    burst is counted in the next window, whose first answer of ours then says it
    is spent: it looked spent by another client, no probe went to find its end,
    and half of each window was kept back for that client (7.2-8.3 s for 200
    pages here, 0.51 of the limit on the simulator). One probe now settles it:
    admitted, the window had ended early, and what looked like the others' was
    our own burst. Later in the window (0.9, 0.95) the burst is counted in the
    first window after all, the resets put its end a second late, and the next
    window's first request is refused with "Retry-After: 1": every worker waited
    out the next window whole, and the run sent every other window (5.4-8.4 s).
    One request halfway through the pause now asks whether the window ended.
    """
    server = Throttler(40, 1.0, phase_s=1000 - into, count_on_answer=True)
    clock = FakeClock()
    limiter = make(clock, max_auto_in_flight=40)
    async with clock.running():
        outcome = await drive(limiter, server, clock, 200, first_alone=True, decided_at=0.0)
    assert outcome.elapsed <= 5.0, outcome.elapsed  # 6 windows: 4.69-4.84 s
    assert outcome.refused <= 0.02 * 200
    assert not limiter.quota.shared
