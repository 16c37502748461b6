import email.utils
import itertools
from collections.abc import Awaitable, Callable

import anyio
import pytest

from fetcher.http.limiter import Limiter, Rate, parse_reset
from tests.fakes import FakeClock
from tests.throttler import Throttler, drive


def make(clock: FakeClock, **options: object) -> Limiter:
    return Limiter(clock=clock, wall_clock=clock.wall, sleep=clock.sleep, **options)  # type: ignore[arg-type]


async def send_times(limiter: Limiter, clock: FakeClock, n: int, hold: float = 0.0) -> list[float]:
    """Run n requests through the limiter from n tasks; return when each was let go."""
    times: list[float] = []

    async def one() -> None:
        async with limiter.slot():
            times.append(clock())
            if hold:
                await clock.sleep(hold)

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return times


@pytest.mark.parametrize(
    ("text", "requests", "period"),
    [
        ("30/min", 30, 60),
        ("10/s", 10, 1),
        ("20/2s", 20, 2),
        ("1000/hour", 1000, 3600),
        (" 5 / 500ms ", 5, 0.5),
    ],
)
def test_rate_parse(text: str, requests: float, period: float) -> None:
    """Rates are written as requests per period."""
    rate = Rate.parse(text)
    assert rate.requests == requests
    assert rate.period_s == pytest.approx(period)


@pytest.mark.parametrize("text", ["30", "fast", "0/s", "10/fortnight", "-1/s"])
def test_rate_parse_rejects_nonsense(text: str) -> None:
    """An unreadable rate names the accepted forms."""
    with pytest.raises(ValueError, match=r"30/min|positive"):
        Rate.parse(text)


def test_parse_reset_formats() -> None:
    """x-ratelimit-reset is read as epoch seconds, epoch ms, delta seconds or a date."""
    now = 1_700_000_000.0
    assert parse_reset(str(now + 12), now_wall=now) == pytest.approx(12)
    assert parse_reset(str(int((now + 3) * 1000)), now_wall=now) == pytest.approx(3)
    assert parse_reset("7", now_wall=now) == 7
    assert parse_reset(
        email.utils.formatdate(now + 30, usegmt=True), now_wall=now
    ) == pytest.approx(30)
    assert parse_reset("2023-11-14T22:13:40+00:00", now_wall=now) == pytest.approx(20)
    assert parse_reset("whenever", now_wall=now) is None


async def test_configured_rate_is_a_sliding_window() -> None:
    """10/s: a window's whole quota may go at once, but never more than 10 in any second."""
    clock = FakeClock()
    limiter = make(clock, rate=Rate.parse("10/s"), max_in_flight=50, margin_s=0.0)
    async with clock.running():
        times = await send_times(limiter, clock, 25)
    assert times == [1000.0] * 10 + [1001.0] * 10 + [1002.0] * 5
    # In any 1-second span there are at most 10 requests.
    assert max(sum(1 for t in times if s <= t < s + 1) for s in times) == 10


async def test_sliding_window_keeps_a_margin_after_the_span() -> None:
    """The next burst waits the span plus the margin, for clock and arrival slack."""
    clock = FakeClock()
    limiter = make(clock, rate=Rate.parse("2/s"), max_in_flight=5, margin_s=0.05)
    async with clock.running():
        times = await send_times(limiter, clock, 4)
    assert times == [1000.0, 1000.0, pytest.approx(1001.05), pytest.approx(1001.05)]


def test_rate_windows_never_exceed_the_rate_in_any_period() -> None:
    """0.5/s is one request per 2 s; 2.5/s is two per second, never four in one."""
    assert Rate.parse("0.5/s").window == (1, 2.0)
    assert Rate.parse("2.5/s").window == (2, 1.0)
    assert Rate.parse("30/min").window == (30, 60.0)
    n, span = Rate(1e20, 1.0).window  # absurd, but no unbounded log of sends
    assert n <= 100_000
    assert n / span == pytest.approx(1e20)


@pytest.mark.parametrize("text", ["2.5/s", "10.5/s", "0.5/s", "3/s"])
async def test_no_period_ever_sees_more_than_the_rate(text: str) -> None:
    """Sends at any rate, whole or fractional: any span of one period holds at most the rate."""
    rate = Rate.parse(text)
    clock = FakeClock()
    limiter = make(clock, rate=rate, max_in_flight=100, margin_s=0.0)
    async with clock.running():
        times = await send_times(limiter, clock, 60)
    most = max(sum(1 for t in times if s <= t < s + rate.period_s) for s in times)
    assert most <= max(rate.requests, 1)


async def test_after_a_refusal_a_configured_rate_stops_bursting() -> None:
    """A refused configured rate recovers only to its even spacing, not to whole bursts.

    Otherwise a server that refuses the rate's bursts (it counts in shorter windows)
    would be hit by them again each time the pace recovered.
    """
    clock = FakeClock()
    limiter = make(clock, rate=Rate.parse("10/s"), max_in_flight=10, default_pause_s=0.1)
    for _ in range(20):  # 20 successes over 2 s: 10/s
        clock.advance(0.1)
        limiter.observe(200, {})
    limiter.refused(None)
    assert limiter.interval_s == pytest.approx(0.2)  # half of 10/s
    clock.advance(60)
    assert limiter.interval_s == pytest.approx(0.1)  # the rate's spacing, and it stays
    async with clock.running():
        times = await send_times(limiter, clock, 5)
    assert [round(b - a, 6) for a, b in itertools.pairwise(times)] == [0.1] * 4


async def test_in_flight_cap() -> None:
    """No more than max_in_flight requests are inside a slot at once."""
    clock = FakeClock()
    limiter = make(clock, max_in_flight=3)
    async with clock.running():
        times = await send_times(limiter, clock, 9, hold=1.0)
    assert limiter.stats.max_in_flight == 3
    assert sorted(times) == [1000.0] * 3 + [1001.0] * 3 + [1002.0] * 3


async def test_refusal_pauses_every_worker() -> None:
    """After a 429 with Retry-After: 5, no worker gets a turn for 5 seconds."""
    clock = FakeClock()
    limiter = make(clock, max_in_flight=10, margin_s=0.0)
    async with clock.running():
        limiter.refused(5.0)
        times = await send_times(limiter, clock, 6)
    assert min(times) >= 1005.0
    assert limiter.stats.refusals == 1
    assert limiter.stats.waits >= 1


async def test_remaining_zero_holds_everyone_until_the_reset() -> None:
    """With x-ratelimit-remaining at 2, two requests go in a window; the rest wait for the reset.

    The run's first window sends half of what its first answer left at once and
    the rest when an answer says whether another client spends the key; none
    comes here, so the second goes at the reset, in the next window's two.
    """
    clock = FakeClock()
    limiter = make(clock, max_in_flight=10, margin_s=0.0)
    headers = {
        "x-ratelimit-limit": "2",
        "x-ratelimit-remaining": "2",
        "x-ratelimit-reset": str(clock.wall() + 10),
    }
    async with clock.running():
        limiter.observe(200, headers)
        assert limiter.waiting_until is None
        times = await send_times(limiter, clock, 4)
    # 1 now (half of the first window's 2); at the reset a fresh window of 2 (the
    # limit header); with no answer to say where that one ends, at least the 10 s
    # the first reset said, and then, that end only guessed, one goes to ask.
    assert sorted(times) == [1000.0, 1010.0, 1010.0, 1020.0]


async def test_budget_counts_requests_in_flight() -> None:
    """Requests still in flight may count against `remaining`, so they are subtracted."""
    clock = FakeClock()
    limiter = make(clock, max_in_flight=10, margin_s=0.0)
    released = anyio.Event()
    inside = 0

    async def hold() -> None:
        nonlocal inside
        async with limiter.slot():
            inside += 1
            await released.wait()

    async with clock.running(), anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(hold)
        await anyio.wait_all_tasks_blocked()
        assert inside == 3
        # A response says 4 remain; 3 are in flight, so only 1 more may go now.
        limiter.observe(
            200,
            {"x-ratelimit-remaining": "4", "x-ratelimit-reset": "30.0", "x-ratelimit-limit": "7"},
        )
        times = await send_times(limiter, clock, 2)
        released.set()
    assert sorted(times) == [1000.0, pytest.approx(1030.0)]


async def test_waiting_until_reports_the_pause() -> None:
    """The limiter says until when workers are held (for progress displays)."""
    clock = FakeClock()
    limiter = make(clock, margin_s=0.0)
    assert limiter.waiting_until is None
    limiter.refused(8.0)
    assert limiter.waiting_until == pytest.approx(1008.0)


async def test_adaptive_pace_drops_after_a_refusal_and_recovers_in_time() -> None:
    """No headers: a refusal sets a pace of half the throughput; it halves every pause-length.

    The pace is lifted by time, not by a count of successes: at the one request
    a second a refusal may leave, counting 20 successes per step took minutes
    per step (the crawl a second process on the same key never recovered from).
    """
    clock = FakeClock()
    limiter = make(clock, max_in_flight=10, recover_s=0.5)
    for _ in range(20):  # 20 successes over 2 s: 10/s
        clock.advance(0.1)
        limiter.observe(200, {})
    limiter.refused(1.0)  # Retry-After: 1, the server's hint of its window
    assert limiter.interval_s == pytest.approx(0.2)  # half of 10/s
    intervals = []
    for _ in range(12):
        clock.advance(1.0)
        intervals.append(limiter.interval_s)
    assert intervals[:3] == [pytest.approx(0.1), pytest.approx(0.05), pytest.approx(0.025)]
    assert intervals[-1] == 0.0  # full speed within a few windows


async def sends_after_refusal(
    retry_after: float, reset: float, *, refills: bool = True
) -> tuple[list[float], Limiter]:
    """20 sends after a refusal at 1000 with ``Retry-After`` and a reset of ``reset``."""
    clock = FakeClock()
    limiter = make(clock, max_in_flight=10, margin_s=0.0)
    limiter.quota.refills = refills
    async with clock.running():
        async with limiter.slot() as ticket:
            pass
        limiter.refused(retry_after, window_headers(20, 0, reset), ticket)
        return await send_times(limiter, clock, 20), limiter


async def test_headers_set_the_pace_not_the_refusals() -> None:
    """A server that sends headers is followed by them: a refusal pauses, it sets no pace."""
    times, limiter = await sends_after_refusal(2.0, 2)
    assert limiter.interval_s == 0.0
    # Paused for the window's end, then the whole fresh window at once; one probe
    # halfway through the span the end may be in ("2" in whole seconds: the second
    # before 1002), alone on the key: it asks whether the window ended early.
    assert times == [pytest.approx(1001.5)] + [pytest.approx(1002.0)] * 19


async def test_a_pause_on_a_server_whose_windows_do_not_refill_has_no_probe() -> None:
    """A sliding window frees one slot at a time: an admitted probe says no window began."""
    times, _ = await sends_after_refusal(2.0, 2, refills=False)
    assert times == [pytest.approx(1002.0)] * 20


async def test_a_pause_of_a_server_that_says_its_window_to_the_millisecond_has_no_probe() -> None:
    """Fractional resets and ``Retry-After``: the pause is exact, nothing goes before its end."""
    times, _ = await sends_after_refusal(1.5, 1.5)
    assert times == [pytest.approx(1001.5)] * 20


async def test_non_adaptive_limiter_ignores_headers() -> None:
    """With adaptive=False only the configured rate and the in-flight cap apply."""
    clock = FakeClock()
    limiter = make(clock, adaptive=False)
    limiter.observe(200, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "100"})
    async with clock.running():
        times = await send_times(limiter, clock, 3)
    assert times == [1000.0] * 3


def window_headers(limit: int, remaining: int, reset_in: float) -> dict[str, str]:
    """Rate-limit headers: a window of `limit`, `remaining` left, resetting in `reset_in` s."""
    return {
        "x-ratelimit-limit": str(limit),
        "x-ratelimit-remaining": str(remaining),
        "x-ratelimit-reset": str(reset_in),
    }


@pytest.mark.parametrize(
    ("limit", "window_s", "room", "expected"),
    [
        (40, 1.0, 32, 32),  # one second of the window allows 40: raised, within the room
        (24, 1.0, 32, 24),  # only as far as the window allows
        (40, 1.0, None, 16),  # no room given (a fixed concurrency): never raised
        (20, 60.0, 32, 16),  # a slow window (20 a minute): nothing to gain
    ],
)
async def test_in_flight_follows_the_servers_window_within_the_room_given(
    limit: int, window_s: float, room: int | None, expected: int
) -> None:
    """Once the window's length is learned, one second of the window may be in flight."""
    clock = FakeClock()
    limiter = make(clock, max_in_flight=16, max_auto_in_flight=room)
    server = Throttler(limit, window_s, phase_s=1000.3, reset="fraction")
    async with clock.running():
        outcome = await drive(limiter, server, clock, 5 * limit)
    assert limiter.max_in_flight == expected
    assert outcome.refused == 0


def _epoch(clock: FakeClock, seconds: float) -> str:
    return f"{clock.wall() + seconds:.3f}"


async def _straggler_after_the_reset(limiter: Limiter, clock: FakeClock) -> None:
    """20 a minute; after the reset, an answer the old window counted (its end is past)."""
    end = _epoch(clock, 30)
    limiter.observe(200, {"x-ratelimit-limit": "20", "x-ratelimit-remaining": "5",
                          "x-ratelimit-reset": end})  # fmt: skip
    await clock.sleep(30.05)
    async with limiter.slot():  # a worker passes the reset
        pass
    limiter.observe(200, {"x-ratelimit-limit": "20", "x-ratelimit-remaining": "4",
                          "x-ratelimit-reset": end})  # fmt: skip


async def _reset_zero_after_the_reset(limiter: Limiter, clock: FakeClock) -> None:
    """1,000 an hour, delta seconds; after the reset an old answer says 0."""
    limiter.observe(200, window_headers(1000, 10, 5))
    await clock.sleep(5.05)
    async with limiter.slot():
        pass
    limiter.observe(200, window_headers(1000, 3, 0))


async def _refused_at_the_edge(limiter: Limiter, clock: FakeClock) -> None:
    """20 a minute, the server's clock 2 s behind: refused just after the client's reset."""
    limiter.observe(200, {"x-ratelimit-limit": "20", "x-ratelimit-remaining": "0",
                          "x-ratelimit-reset": _epoch(clock, 38)})  # fmt: skip
    async with limiter.slot():
        pass
    limiter.refused(2.0, window_headers(20, 0, 2))


async def _whole_seconds_in_one_window(limiter: Limiter, clock: FakeClock) -> None:
    """40 per 10 s, resets in whole seconds rounded up: one window read as ends 0.65 s apart."""
    limiter.observe(200, window_headers(40, 30, 1))
    await clock.sleep(0.65)
    limiter.observe(200, window_headers(40, 20, 1))


@pytest.mark.parametrize(
    "scenario",
    [
        _straggler_after_the_reset,
        _reset_zero_after_the_reset,
        _refused_at_the_edge,
        # _whole_seconds_in_one_window lends the first window's slots and takes them
        # back: tests/test_limits_in_the_wild.py::test_the_first_windows_slots_are_...
    ],
)
async def test_answers_that_tell_no_window_length_raise_nothing(
    scenario: Callable[[Limiter, FakeClock], Awaitable[None]],
) -> None:
    """Answers about an ended window, refusals and rounded resets are not window lengths."""
    clock = FakeClock()
    limiter = make(clock, max_in_flight=16, max_auto_in_flight=32)
    async with clock.running():
        await scenario(limiter, clock)
    assert limiter.max_in_flight == 16
