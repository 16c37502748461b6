"""The simulator's rate-limit switches: arithmetic on fake clocks, wiring over a real port."""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError

from fetcher.simulator import RunningSimulator, SimulatorConfig, serve
from fetcher.simulator.__main__ import build_parser, config_from_args, main
from fetcher.simulator._config import CountOn, ResetFormat, WindowMode
from fetcher.simulator._ratelimit import Decision, RateLimiter, aligned_phase

KEY = "sim-key"
MEMBERS_PATH = "/v1/user/team-member-list"
EPOCH = 1_700_000_000.0


class FakeClock:
    """One fake time line read as both clocks: monotonic ``now``, wall ``offset + now``."""

    def __init__(self, now: float = 0.0, offset: float = 0.0) -> None:
        self.now = now
        self.offset = offset

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.offset + self.now


def make_limiter(
    clock: FakeClock,
    limit: int,
    window_s: float,
    *,
    mode: WindowMode = "first-request",
    phase_s: float = 0.0,
    count_on: CountOn = "arrival",
    count_refused: bool = False,
) -> RateLimiter:
    return RateLimiter(
        limit,
        window_s,
        mode=mode,
        phase_s=phase_s,
        count_on=count_on,
        count_refused=count_refused,
        clock=clock.monotonic,
        wall_clock=clock.wall,
    )


def decision(reset_in: float, reset_at: float = EPOCH) -> Decision:
    return Decision(allowed=True, limit=5, remaining=4, reset_in=reset_in, reset_at=reset_at)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session, closed after the test."""
    async with aiohttp.ClientSession() as client:
        yield client


async def get(session: aiohttp.ClientSession, sim: RunningSimulator) -> aiohttp.ClientResponse:
    """GET the member list (auth and rate limit apply, no body to build); body read."""
    async with session.get(sim.base_url + MEMBERS_PATH, headers={"x-api-key": KEY}) as resp:
        await resp.read()
        return resp


def rate(sim: RunningSimulator) -> dict[str, Any]:
    rate_stats: dict[str, Any] = sim.stats.snapshot()["rate"]
    return rate_stats


# -- defaults and validation ---------------------------------------------------------------------


def test_new_switches_default_to_todays_behaviour() -> None:
    """With no switch set, windows open at the first request, count on arrival, refusals do not."""
    config = SimulatorConfig()
    assert config.rate_window_mode == "first-request"
    assert config.rate_window_phase_s is None
    assert config.rate_count_on == "arrival"
    assert config.rate_count_refused is False
    assert config.rate_retry_after is True
    assert config.reset_format == "epoch"
    assert config.foreign_share == 0.0


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"foreign_share": 0.5}, "foreign_share"),
        ({"foreign_share": 1.0, "rate_limit": 5}, "foreign_share"),
        ({"foreign_share": -0.1, "rate_limit": 5}, "foreign_share"),
        ({"rate_window_phase_s": float("nan")}, "rate_window_phase_s"),
        ({"rate_window_mode": "leaky"}, "rate_window_mode"),
        ({"rate_count_on": "finish"}, "rate_count_on"),
        ({"reset_format": "iso"}, "reset_format"),
    ],
)
def test_invalid_rate_switches_name_their_field(overrides: dict[str, Any], field: str) -> None:
    """A bad switch, or a foreign share without a rate limit, fails naming the field."""
    with pytest.raises(ValidationError, match=field):
        SimulatorConfig(**overrides)


# -- reset formats -------------------------------------------------------------------------------


def test_reset_seconds_are_whole_rounded_up_at_least_one() -> None:
    """Format "seconds" is the whole seconds left rounded up, at least 1, deaf to float noise."""
    assert decision(6.2).reset_header("seconds") == "7"
    assert decision(6.0).reset_header("seconds") == "6"
    assert decision(0.004).reset_header("seconds") == "1"
    assert decision(30.000000000004).reset_header("seconds") == "30"
    assert decision(6.2).retry_after == 7


def test_reset_fractional_has_milliseconds_rounded_up() -> None:
    """Format "fractional" is the seconds left to the millisecond, rounded up, at least 0.001."""
    assert decision(0.734).reset_header("fractional") == "0.734"
    assert decision(0.7341).reset_header("fractional") == "0.735"
    assert decision(12.5).reset_header("fractional") == "12.500"
    assert decision(0.0000004).reset_header("fractional") == "0.001"


def test_reset_epoch_has_milliseconds() -> None:
    """Format "epoch" is the wall-clock reset in epoch seconds with milliseconds."""
    clock = FakeClock(100.0, offset=EPOCH)
    limiter = make_limiter(clock, 2, 10.0)
    limiter.check(KEY)
    clock.now = 103.25
    assert limiter.check(KEY).reset_header("epoch") == f"{EPOCH + 110.0:.3f}"
    assert decision(1.0, reset_at=EPOCH + 0.1234).reset_header("epoch") == "1700000000.123"


def test_reset_epoch_seconds_are_whole_rounded_up() -> None:
    """Format "epoch-seconds" is the epoch second of the reset, rounded up (exact ends stay)."""
    assert decision(1.0, reset_at=EPOCH + 10.25).reset_header("epoch-seconds") == "1700000011"
    assert decision(1.0, reset_at=EPOCH + 10.0).reset_header("epoch-seconds") == "1700000010"


def test_reset_http_date_is_the_reset_second_in_gmt() -> None:
    """Format "http-date" is an RFC 7231 date of the reset, rounded up to the second."""
    header = decision(1.0, reset_at=EPOCH + 10.25).reset_header("http-date")
    assert header == "Tue, 14 Nov 2023 22:13:31 GMT"
    assert email.utils.parsedate_to_datetime(header).timestamp() == EPOCH + 11


@pytest.mark.parametrize(
    ("reset_format", "pattern"),
    [
        ("epoch", r"\d{10}\.\d{3}"),
        ("seconds", r"30"),
        ("fractional", r"(29\.9\d\d|30\.000)"),
        ("epoch-seconds", r"\d{10}"),
        ("http-date", r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT"),
    ],
)
async def test_each_reset_format_reaches_the_header(
    session: aiohttp.ClientSession, reset_format: ResetFormat, pattern: str
) -> None:
    """The served x-ratelimit-reset is written in the configured format."""
    config = SimulatorConfig(team_size=2, rate_limit=5, rate_window_s=30, reset_format=reset_format)
    async with serve(config) as running:
        answer = await get(session, running)
    assert re.fullmatch(pattern, answer.headers["x-ratelimit-reset"])


# -- window modes --------------------------------------------------------------------------------


def test_first_request_window_opens_with_the_first_hit() -> None:
    """Mode "first-request": a window starts at the first hit after expiry, whatever the wall."""
    clock = FakeClock(1000.1)
    limiter = make_limiter(clock, 2, 1.0)
    first = limiter.check(KEY)
    assert (first.remaining, first.reset_in) == (1, 1.0)
    assert limiter.phase_s is None


def test_aligned_windows_sit_on_the_wall_clock_at_the_phase() -> None:
    """Mode "aligned": windows are [phase + kW, phase + (k+1)W) of wall time, not first hits."""
    clock = FakeClock(1000.1)
    limiter = make_limiter(clock, 2, 1.0, mode="aligned", phase_s=0.25)
    first = limiter.check(KEY)
    assert first.allowed
    assert first.remaining == 1
    assert first.reset_in == pytest.approx(0.15)
    assert first.reset_at == 1000.25  # exactly the window end
    clock.now = 1000.2
    assert limiter.check(KEY).remaining == 0
    clock.now = 1000.2499
    refused = limiter.check(KEY)
    assert (refused.allowed, refused.remaining) == (False, 0)
    clock.now = 1000.25
    fresh = limiter.check(KEY)
    assert (fresh.allowed, fresh.remaining, fresh.reset_in) == (True, 1, 1.0)
    assert limiter.phase_s == 0.25


def test_aligned_windows_ignore_the_monotonic_clock() -> None:
    """Aligned windows follow the wall clock, so two processes with the same phase agree."""
    one, other = FakeClock(5.0, offset=EPOCH), FakeClock(70_000.0, offset=EPOCH - 69_995.0)
    limiters = [make_limiter(c, 3, 10.0, mode="aligned", phase_s=4.0) for c in (one, other)]
    resets = {limiter.check(KEY).reset_at for limiter in limiters}
    assert resets == {EPOCH + 14.0}  # [EPOCH + 4, EPOCH + 14)


def test_configured_phase_is_taken_modulo_the_window() -> None:
    """rate_window_phase_s is used modulo W, so it always lies in [0, W)."""
    assert aligned_phase(1.0, 0.25, seed=0) == 0.25
    assert aligned_phase(1.0, 2.25, seed=0) == 0.25
    assert aligned_phase(1.0, -0.75, seed=0) == 0.25
    assert aligned_phase(10.0, 0.0, seed=0) == 0.0
    assert aligned_phase(1.0, -1e-17, seed=0) == 0.0


async def test_seed_draws_a_reproducible_phase_that_the_simulator_exposes() -> None:
    """Without rate_window_phase_s the phase comes from the seed; stats and accessor show it."""
    phases = {seed: aligned_phase(60.0, None, seed) for seed in range(5)}
    assert all(0.0 <= phase < 60.0 for phase in phases.values())
    assert phases == {seed: aligned_phase(60.0, None, seed) for seed in range(5)}
    assert len(set(phases.values())) > 1
    config = SimulatorConfig(seed=3, rate_limit=5, rate_window_s=60.0, rate_window_mode="aligned")
    async with serve(config) as running:
        assert running.rate_window_phase_s == phases[3]
        assert rate(running)["phase_s"] == phases[3]
        assert rate(running)["mode"] == "aligned"
    async with serve(config.model_copy(update={"rate_window_phase_s": 75.5})) as running:
        assert running.rate_window_phase_s == 15.5
    async with serve(SimulatorConfig(rate_limit=5)) as running:
        assert running.rate_window_phase_s is None
        assert rate(running)["phase_s"] is None
    async with serve(SimulatorConfig()) as running:
        assert running.rate_window_phase_s is None


def test_sliding_log_admits_refuses_and_frees_slots() -> None:
    """Mode "sliding": admit while under limit hits lie in the last W; reset when a slot frees."""
    clock = FakeClock(0.0)
    limiter = make_limiter(clock, 3, 10.0, mode="sliding")
    seen = []
    for now in (0.0, 2.0, 4.0):
        clock.now = now
        hit = limiter.check(KEY)
        seen.append((hit.allowed, hit.remaining, hit.reset_in))
    # The oldest hit (at 0) frees its slot at 10, whichever hit is asking.
    assert seen == [(True, 2, 10.0), (True, 1, 8.0), (True, 0, 6.0)]
    clock.now = 5.0
    refused = limiter.check(KEY)
    assert (refused.allowed, refused.remaining, refused.reset_in) == (False, 0, 5.0)
    assert refused.retry_after == 5
    clock.now = 10.0  # the hit at 0 has left: (0, 10] holds 2 and 4
    again = limiter.check(KEY)
    assert (again.allowed, again.remaining, again.reset_in) == (True, 0, 2.0)
    clock.now = 11.0
    assert limiter.check(KEY).reset_in == 1.0
    assert limiter.max_in_window == 3


def test_sliding_log_reset_is_the_window_when_empty() -> None:
    """An empty sliding log resets in W (answer mode checks without logging)."""
    clock = FakeClock(0.0)
    limiter = make_limiter(clock, 3, 10.0, mode="sliding", count_on="answer")
    assert limiter.check(KEY).reset_in == 10.0


# -- counting on arrival or on answer ------------------------------------------------------------


def test_answer_mode_does_not_count_requests_in_flight() -> None:
    """count_on="answer": in-flight requests pass the check; their hits land when answered."""
    clock = FakeClock(0.0)
    limiter = make_limiter(clock, 2, 10.0, count_on="answer")
    in_flight = [limiter.check(KEY) for _ in range(3)]
    assert [(d.allowed, d.remaining) for d in in_flight] == [(True, 1)] * 3
    assert limiter.max_in_window == 0
    clock.now = 0.5
    for sent in in_flight:
        limiter.answered(KEY, sent)
    assert limiter.max_in_window == 3  # the client overshot: the window holds 3 > limit
    refused = limiter.check(KEY)
    assert not refused.allowed
    assert refused.reset_in == 10.0  # the window opened with the first answer, at 0.5


def test_answer_mode_tells_what_arrived_in_a_window_from_what_was_counted_in_it() -> None:
    """count_on="answer": sent before the end, answered after it, counted in the next window.

    ``max_in_window`` then says what the server counted (its latency included);
    ``max_arrived_in_window`` what the client sent into one window.
    """
    clock = FakeClock(0.9)
    limiter = make_limiter(clock, 3, 1.0, mode="aligned", count_on="answer")
    late = [limiter.check(KEY) for _ in range(2)]  # arrive at 0.9, in [0, 1)
    clock.now = 1.05  # answered in [1, 2)
    for sent in late:
        limiter.answered(KEY, sent)
    fresh = [limiter.check(KEY) for _ in range(2)]  # arrive in [1, 2): 2 + 2 counted there
    for sent in fresh:
        limiter.answered(KEY, sent)
    assert all(d.allowed for d in late + fresh)
    assert (limiter.max_in_window, limiter.max_arrived_in_window) == (4, 2)


def test_arrival_mode_counts_at_the_check() -> None:
    """count_on="arrival": each check counts, so the third of three concurrent checks is refused."""
    clock = FakeClock(0.0)
    limiter = make_limiter(clock, 2, 10.0)
    in_flight = [limiter.check(KEY) for _ in range(3)]
    assert [(d.allowed, d.remaining) for d in in_flight] == [(True, 1), (True, 0), (False, 0)]
    for sent in in_flight:
        limiter.answered(KEY, sent)  # does nothing: already counted
    assert limiter.max_in_window == 2


def test_answer_mode_counts_in_the_window_in_force_at_the_answer() -> None:
    """A request checked in one aligned window but answered in the next counts in the next."""
    clock = FakeClock(0.9)
    limiter = make_limiter(clock, 1, 1.0, mode="aligned", count_on="answer")
    checked = [limiter.check(KEY), limiter.check(KEY)]
    assert all(d.allowed for d in checked)
    clock.now = 1.1
    for sent in checked:
        limiter.answered(KEY, sent)
    clock.now = 1.2
    assert not limiter.check(KEY).allowed  # [1, 2) holds both hits
    clock.now = 2.0
    assert limiter.check(KEY).allowed


async def test_answer_mode_over_the_port(session: aiohttp.ClientSession) -> None:
    """Over HTTP with latency, concurrent requests all pass in answer mode, not in arrival mode."""
    statuses: dict[str, list[int]] = {}
    modes: tuple[CountOn, ...] = ("arrival", "answer")
    for count_on in modes:
        config = SimulatorConfig(
            team_size=2, rate_limit=2, rate_window_s=30, latency_ms=150, rate_count_on=count_on
        )
        async with serve(config) as running:
            answers = await asyncio.gather(*(get(session, running) for _ in range(3)))
            statuses[count_on] = sorted(a.status for a in answers)
            after = await get(session, running)
            assert after.status == 429
            if count_on == "answer":
                assert [a.headers["x-ratelimit-remaining"] for a in answers] == ["1"] * 3
                assert rate(running)["max_in_window"] == 3
                assert rate(running)["count_on"] == "answer"
    assert statuses == {"arrival": [200, 200, 429], "answer": [200, 200, 200]}


async def test_answer_mode_never_counts_a_dropped_connection(
    session: aiohttp.ClientSession,
) -> None:
    """In answer mode a request that gets no answer (a "reset" fault) is never counted."""
    config = SimulatorConfig(
        team_size=2, rate_limit=2, fault_rate=1.0, fault_kinds=("reset",), rate_count_on="answer"
    )
    async with serve(config) as running:
        body = {
            "userIds": running.user_ids,
            "startDate": "2024-01-01T00:00:00+00:00",
            "endDate": "2024-01-31T00:00:00+00:00",
            "countBy": "absolute",
            "limit": 10,
            "page": 1,
            "sortOrder": "desc",
            "orderBy": "prospectAdded",
            "type": "prospect",
        }
        url = running.base_url + "/v1/analytics/team/stats"
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.post(url, json=body, headers={"x-api-key": KEY}) as resp:
                await resp.read()
        assert running.stats.responses == {"reset": 1}
        assert rate(running)["max_in_window"] == 0
        assert rate(running)["admitted"] == 1


# -- refused requests counted or not -------------------------------------------------------------


def test_counted_refusals_keep_a_sliding_log_full() -> None:
    """rate_count_refused: a client hammering a full sliding log keeps it full; by default not."""
    outcomes = {}
    for count_refused in (False, True):
        clock = FakeClock(0.0)
        limiter = make_limiter(clock, 2, 10.0, mode="sliding", count_refused=count_refused)
        for now in (0.0, 1.0, 5.0, 9.0):
            clock.now = now
            limiter.check(KEY)
        clock.now = 10.5
        outcomes[count_refused] = limiter.check(KEY)
    assert outcomes[False].allowed
    assert not outcomes[True].allowed
    # Logged: 1, 5, 9, 10.5; a slot frees when all but one of them left: at 9 + 10.
    assert outcomes[True].reset_in == pytest.approx(8.5)


def test_counted_refusals_count_in_a_fixed_window_but_do_not_extend_it() -> None:
    """In a fixed window counted refusals raise the count (max_in_window) yet it ends on time."""
    for count_refused, peak in ((False, 1), (True, 3)):
        clock = FakeClock(0.0)
        limiter = make_limiter(clock, 1, 10.0, count_refused=count_refused)
        assert limiter.check(KEY).allowed
        clock.now = 1.0
        assert not limiter.check(KEY).allowed
        assert not limiter.check(KEY).allowed
        assert limiter.max_in_window == peak
        clock.now = 10.0
        assert limiter.check(KEY).allowed


def test_counted_refusals_in_answer_mode_count_when_answered() -> None:
    """With answer counting, a counted refusal lands when its refusal is sent."""
    clock = FakeClock(0.0)
    limiter = make_limiter(clock, 1, 10.0, count_on="answer", count_refused=True)
    admitted = limiter.check(KEY)
    limiter.answered(KEY, admitted)
    refused = limiter.check(KEY)
    assert limiter.max_in_window == 1
    limiter.answered(KEY, refused)
    assert limiter.max_in_window == 2


# -- the refusal: Retry-After and status ---------------------------------------------------------


@pytest.mark.parametrize("retry_after", [True, False])
async def test_retry_after_can_be_left_out(
    session: aiohttp.ClientSession, retry_after: bool
) -> None:
    """rate_retry_after=False drops retry-after from refusals; x-ratelimit-* stay either way."""
    config = SimulatorConfig(
        team_size=2, rate_limit=1, rate_window_s=5, rate_retry_after=retry_after
    )
    async with serve(config) as running:
        assert (await get(session, running)).status == 200
        refused = await get(session, running)
    assert refused.status == 429
    assert refused.headers.get("retry-after") == ("5" if retry_after else None)
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert refused.headers["x-ratelimit-limit"] == "1"
    assert "x-ratelimit-reset" in refused.headers


async def test_400_rate_limit_status_with_the_switches(session: aiohttp.ClientSession) -> None:
    """A 400 "Rate Limit" refusal honours the window mode, reset format and no retry-after."""
    config = SimulatorConfig(
        team_size=2,
        rate_limit=1,
        rate_window_s=5,
        rate_limit_status=400,
        rate_window_mode="sliding",
        reset_format="fractional",
        rate_retry_after=False,
    )
    async with serve(config) as running:
        assert (await get(session, running)).status == 200
        async with session.get(running.base_url + MEMBERS_PATH, headers={"x-api-key": KEY}) as resp:
            body = await resp.json()
            refused = resp
        assert running.stats.rate_limited == 1
    assert refused.status == 400
    assert "Rate Limit" in body["message"]
    assert "retry-after" not in refused.headers
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert 4.0 < float(refused.headers["x-ratelimit-reset"]) <= 5.0


# -- stats ---------------------------------------------------------------------------------------


def test_max_in_window_per_mode() -> None:
    """max_in_window is the most hits in one fixed window, or in any span of W when sliding."""
    cases: list[tuple[WindowMode, list[float], int]] = [
        # Sliding: (0, 6) and (6, 12) each fit in a span of 10, never all three.
        ("sliding", [0.0, 6.0, 12.0], 2),
        ("sliding", [0.0, 5.0, 9.9], 3),
        # Aligned at phase 0: [0, 10) holds 1.0, [10, 20) holds the other three.
        ("aligned", [1.0, 10.5, 12.0, 19.0], 3),
        # First-request: [1, 11) holds 1.0 and 10.5, [12, 22) holds 12 and 19.
        ("first-request", [1.0, 10.5, 12.0, 19.0], 2),
    ]
    for mode, times, peak in cases:
        clock = FakeClock(0.0)
        limiter = make_limiter(clock, 5, 10.0, mode=mode)
        for now in times:
            clock.now = now
            limiter.check(KEY)
        assert limiter.max_in_window == peak, mode
        limiter.reset()
        assert limiter.max_in_window == 0


async def test_rate_stats_count_real_clients_and_reset(session: aiohttp.ClientSession) -> None:
    """The "rate" stats count admissions and refusals; /_simulator/reset zeroes them and windows."""
    config = SimulatorConfig(team_size=2, rate_limit=2, rate_window_s=30)
    async with serve(config) as running:
        statuses = [(await get(session, running)).status for _ in range(4)]
        assert statuses == [200, 200, 429, 429]
        async with session.get(running.base_url + "/_simulator/stats") as resp:
            remote = await resp.json()
        assert remote == json.loads(json.dumps(running.stats.snapshot()))
        assert remote["rate"] == {
            "limit": 2,
            "window_s": 30.0,
            "mode": "first-request",
            "phase_s": None,
            "count_on": "arrival",
            "count_refused": False,
            "max_in_window": 2,
            "max_arrived_in_window": 2,
            "admitted": 2,
            "refused": 2,
            "foreign_admitted": 0,
            "foreign_refused": 0,
        }
        assert remote["rate_limited"] == 2
        async with session.post(running.base_url + "/_simulator/reset") as resp:
            assert resp.status == 200
        after = rate(running)
        assert (after["max_in_window"], after["admitted"], after["refused"]) == (0, 0, 0)
        fresh = await get(session, running)
        assert (fresh.status, fresh.headers["x-ratelimit-remaining"]) == (200, "1")


async def test_no_rate_limit_no_rate_stats() -> None:
    """Without rate_limit the snapshot has no "rate" object, as before."""
    async with serve(SimulatorConfig(team_size=2)) as running:
        assert "rate" not in running.stats.snapshot()


# -- the foreign client --------------------------------------------------------------------------


async def test_foreign_client_spends_about_its_share(session: aiohttp.ClientSession) -> None:
    """foreign_share=0.5 of 10 per 0.5 s hits every 0.1 s: never over 5 in any span of W."""
    config = SimulatorConfig(
        team_size=2,
        rate_limit=10,
        rate_window_s=0.5,
        rate_window_mode="sliding",
        foreign_share=0.5,
    )
    async with serve(config) as running:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(1.0)
        elapsed = loop.time() - started
        spent = rate(running)
        # One hit at start, then one per 0.1 s or a little more: timers only run late.
        assert 0.6 * elapsed / 0.1 <= spent["foreign_admitted"] <= elapsed / 0.1 + 2
        assert spent["foreign_refused"] == 0
        assert 3 <= spent["max_in_window"] <= 5
        assert running.stats.requests == 0
        assert running.stats.rate_limited == 0
        # A real client bursting now gets what the foreign client left; the key's total,
        # both clients together, never exceeds the limit.
        statuses = [(await get(session, running)).status for _ in range(25)]
        assert statuses.count(200) >= 3
        assert statuses.count(429) >= 1
        assert statuses.count(429) == rate(running)["refused"] == running.stats.rate_limited
        assert rate(running)["max_in_window"] <= 10
        running.reset()
        assert rate(running)["foreign_admitted"] == 0
        await asyncio.sleep(0.3)
        assert rate(running)["foreign_admitted"] >= 1  # it keeps running after a reset


async def test_foreign_client_stops_with_the_server() -> None:
    """Leaving serve() with a foreign client running is prompt and leaves no task behind."""
    config = SimulatorConfig(rate_limit=10, rate_window_s=60, foreign_share=0.5)
    loop = asyncio.get_running_loop()
    before = asyncio.all_tasks()
    started = loop.time()
    async with serve(config) as running:
        await asyncio.sleep(0.05)
        assert rate(running)["foreign_admitted"] == 1  # next hit due in 12 s
    assert loop.time() - started < 2.0
    assert asyncio.all_tasks() == before


def test_foreign_hits_go_through_the_limiter_and_can_be_refused() -> None:
    """Foreign hits share the first key's limit: when it is full they are refused too."""
    clock = FakeClock(0.0)
    limiter = make_limiter(clock, 2, 10.0)
    assert limiter.hit(KEY).allowed  # a foreign hit
    assert limiter.check(KEY).allowed  # a real client
    assert not limiter.hit(KEY).allowed  # the next foreign hit finds the window full


# -- the command line ----------------------------------------------------------------------------


def test_cli_flags_parse_into_the_config() -> None:
    """Every rate-limit flag sets its SimulatorConfig field."""
    args = build_parser().parse_args(
        [
            "--port=0",
            "--rate-limit=40",
            "--rate-window=1",
            "--rate-window-mode=aligned",
            "--rate-window-phase=0.25",
            "--rate-count-on=answer",
            "--rate-count-refused",
            "--no-retry-after",
            "--rate-limit-status=400",
            "--reset-format=epoch-seconds",
            "--foreign-share=0.5",
        ]
    )
    config = config_from_args(args)
    assert config.rate_limit == 40
    assert config.rate_window_s == 1.0
    assert config.rate_window_mode == "aligned"
    assert config.rate_window_phase_s == 0.25
    assert config.rate_count_on == "answer"
    assert config.rate_count_refused is True
    assert config.rate_retry_after is False
    assert config.rate_limit_status == 400
    assert config.reset_format == "epoch-seconds"
    assert config.foreign_share == 0.5


def test_cli_without_flags_is_the_default_config() -> None:
    """With no flag but the port, the CLI serves exactly SimulatorConfig()'s defaults."""
    assert config_from_args(build_parser().parse_args(["--port", "0"])) == SimulatorConfig()


def test_cli_rejects_a_foreign_share_without_a_rate_limit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--foreign-share without --rate-limit exits 2 before serving, naming foreign_share."""
    with pytest.raises(SystemExit) as exited:
        main(["--port", "0", "--foreign-share", "0.5"])
    assert exited.value.code == 2
    assert "foreign_share" in capsys.readouterr().err


# --- a limit per key (workspaces on their own plans) ------------------------------------------


@pytest.mark.parametrize("mode", ["first-request", "aligned", "sliding"])
def test_each_key_has_its_own_limit_and_busiest_window(mode: WindowMode) -> None:
    clock = FakeClock(offset=1_000_000.0)
    limiter = RateLimiter(
        5,
        1.0,
        mode=mode,
        clock=clock.monotonic,
        wall_clock=clock.wall,
        key_limits={"a": 1, "b": 3},
    )
    admitted = {key: sum(limiter.hit(key).allowed for _ in range(6)) for key in ("a", "b", "z")}
    assert admitted == {"a": 1, "b": 3, "z": 5}  # z has no limit of its own: the default
    assert limiter.check("b").limit == 3
    assert limiter.describe()["keys"] == [
        {"limit": 1, "max_in_window": 1},
        {"limit": 3, "max_in_window": 3},
    ]
    clock.now += 1.5  # the next window
    assert limiter.hit("a").allowed
    limiter.reset()
    assert [k["max_in_window"] for k in limiter.describe()["keys"]] == [0, 0]


def test_key_rate_limits_need_one_per_key_and_a_default() -> None:
    with pytest.raises(ValidationError, match="one per key"):
        SimulatorConfig(api_keys=("a", "b"), rate_limit=5, key_rate_limits=(1,))
    with pytest.raises(ValidationError, match="needs rate_limit"):
        SimulatorConfig(api_keys=("a",), key_rate_limits=(1,))
    args = ["--port", "0", "--api-key", "a", "--api-key", "b", "--rate-limit", "9"]
    config = config_from_args(build_parser().parse_args([*args, "--key-rate-limits", "2,4"]))
    assert config.key_rate_limits == (2, 4)
    limiter = RateLimiter.from_config(config)
    assert (limiter.limit_for("a"), limiter.limit_for("b"), limiter.limit_for("c")) == (2, 4, 9)
