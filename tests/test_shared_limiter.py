"""--shared-limiter: one window budget for every process on one key, in the real Redis."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from fetcher import Client, MemorySink, export
from fetcher.errors import ConfigError
from fetcher.http.limiter import Limiter
from fetcher.http.shared import Grant, SharedWindow, shared_key
from fetcher.simulator import SimulatorConfig, serve
from tests.fakes import FakeClock
from tests.integration import KEY, assert_same_rows, spec_for
from tests.test_check import closed_port

REDIS = "redis://127.0.0.1:6379/15"


def test_the_redis_key_is_a_digest_never_the_api_key() -> None:
    """The shared state's name says nothing of the key, and differs per key and host."""
    key = shared_key("sk-live-SECRET", "https://open-api.saleshandy.com")
    assert "SECRET" not in key and "sk-live" not in key
    assert key != shared_key("sk-live-SECRET", "https://leo-open-api-gateway.saleshandy.com")
    assert key != shared_key("sk-live-OTHER", "https://open-api.saleshandy.com")


async def test_an_unreachable_redis_stops_before_any_request() -> None:
    """No Redis at the URL: a ConfigError naming it (not its password), before any request."""
    url = f"redis://:hunter2@127.0.0.1:{closed_port()}/0"
    async with serve(SimulatorConfig(team_size=5)) as sim:
        client = Client(api_key=KEY, base_url=sim.base_url, shared_limiter=url)
        refused = r"cannot reach Redis at redis://127\.0\.0\.1"
        with pytest.raises(ConfigError, match=refused) as info:
            async with client:
                pass
        requests = sim.stats.requests
    assert "hunter2" not in str(info.value)
    assert requests == 0


def test_a_url_that_is_not_redis_is_refused() -> None:
    """--shared-limiter takes redis:// or rediss:// only."""
    with pytest.raises(ConfigError, match=r"redis://HOST:PORT/DB"):
        SharedWindow("http://127.0.0.1:6379", "k")


async def test_two_clients_on_one_key_share_one_window() -> None:
    """Two exports on one key through one Redis: exact output, the window never exceeded."""
    # A fresh Redis hash per run: it digests the host, and the port is new each time.
    config = SimulatorConfig(
        team_size=400,
        rate_limit=20,
        rate_window_s=1.0,
        rate_window_mode="aligned",
        reset_format="seconds",
        latency_ms=30,
    )
    async with serve(config) as sim:
        specs = [spec_for(sim), spec_for(sim, type="email")]
        sinks = [MemorySink(), MemorySink()]

        async def one(i: int) -> None:
            summary = await export(
                specs[i], sinks[i], api_key=KEY, base_url=sim.base_url, shared_limiter=REDIS
            )
            assert summary.ok

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(2):
                    tg.start_soon(one, i)
        rate: dict[str, Any] = sim.stats.snapshot()["rate"]
        expected = [sim.expected_rows(spec.body(1)) for spec in specs]
    for sink, rows in zip(sinks, expected, strict=True):
        assert_same_rows(sink.records, rows)
    assert rate["max_in_window"] <= 20
    assert rate["refused"] <= 2


async def _window(name: str) -> SharedWindow:
    """A SharedWindow on a fresh hash of the real Redis (DB 15)."""
    window = SharedWindow(REDIS, f"fetcher:test:{name}:{anyio.current_time()}", probe_s=5.0)
    await window.connect()
    return window


async def test_until_an_answer_says_the_limit_one_request_goes() -> None:
    """Nothing answered yet: one turn is granted across processes, the others wait for it."""
    first, second = await _window("probe"), await _window("probe")
    second.key = first.key
    try:
        assert (await first.take(limit=None, fallback_s=1.0, now=0.0)).granted
        held = await second.take(limit=None, fallback_s=1.0, now=0.0)
        assert not held.granted and 0 < held.wait_s <= 0.05
        # The first answer tells the limit: the budget is shared from then on.
        assert (await second.take(limit=5, fallback_s=1.0, now=0.0)).granted
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_window_lasts_until_its_reported_end_and_no_longer_admits_than_its_limit() -> None:
    """Three per window: the fourth waits for the end a reset header reported, then goes."""
    window = await _window("budget")
    try:
        grants = [await window.take(limit=3, fallback_s=5.0, now=0.0) for _ in range(4)]
        assert [g.granted for g in grants] == [True, True, True, False]
        assert grants[3].wait_s == pytest.approx(0.05, abs=0.01)  # no end known: ask again soon
        window.saw(grants[0].window, remaining=2, ends_at=0.3)
        denied = await window.take(limit=3, fallback_s=5.0, now=0.0)
        assert not denied.granted and 0.2 < denied.wait_s <= 0.3
        await anyio.sleep(denied.wait_s + 0.02)
        fresh = await window.take(limit=3, fallback_s=5.0, now=0.0)
        assert fresh.granted and fresh.window == grants[0].window + 1
    finally:
        await window.aclose()


async def test_requests_the_server_counted_in_its_next_window_are_charged_to_it() -> None:
    """In flight when the server's window turned: the next shared window has that many fewer."""
    window = await _window("later")
    try:
        grants = [await window.take(limit=3, fallback_s=5.0, now=0.0) for _ in range(3)]
        # Two of the three were counted by the server's next window; this one ends soon.
        window.saw(grants[0].window, remaining=2, ends_at=0.2)
        window.saw(grants[0].window, remaining=2, ends_at=None, later=True)
        window.saw(grants[0].window, remaining=1, ends_at=None, later=True)
        await window.take(limit=3, fallback_s=5.0, now=0.0)  # carries the reports
        await anyio.sleep(0.25)
        after = [await window.take(limit=3, fallback_s=5.0, now=0.0) for _ in range(2)]
        assert [g.granted for g in after] == [True, False]  # 3 - 2 charged = 1 left
    finally:
        await window.aclose()


async def test_requests_granted_late_in_a_window_known_to_a_second_count_in_the_next_too() -> None:
    """A late start: the window's end is known only to a whole second, so late grants count twice.

    Seen on a busy machine: the probe's answer said "1" (the window ends within a
    second), the other processes started 0.4 s later and took the rest of the
    quota, the server's window had turned in between, and the next shared window
    (opening at the sure end) sent its whole quota into the server's window that
    already held them: 10 refused, or 19 counted in one window where 10 are allowed.
    """
    window, clock = await _window("late"), anyio.current_time
    try:
        probe = await window.take(limit=None, fallback_s=1.0, now=clock())
        assert probe.granted
        # Its answer: 9 left, a reset of "1" read at once: the end is in (0, 0.6] s from now.
        t0 = clock()
        window.saw(probe.window, remaining=9, ends_at=t0 + 0.6, ends_after=t0 - 0.4)
        await anyio.sleep(0.3)  # the others start late
        late = [await window.take(limit=10, fallback_s=1.0, now=clock()) for _ in range(9)]
        assert all(g.granted and g.window == probe.window for g in late)
        await anyio.sleep(t0 + 0.65 - clock())
        after = [await window.take(limit=10, fallback_s=1.0, now=clock()) for _ in range(2)]
        # The 9 may have been counted in the server's next window: it has 1 left.
        assert [g.granted for g in after] == [True, False]
        assert after[0].window == probe.window + 1
    finally:
        await window.aclose()


async def test_a_burst_at_the_opening_is_not_charged_to_the_next_window() -> None:
    """The quota taken at once when the window opens: the next window has its whole quota."""
    window, clock = await _window("burst"), anyio.current_time
    try:
        grants = [await window.take(limit=5, fallback_s=1.0, now=clock()) for _ in range(5)]
        assert all(g.granted for g in grants)
        t0 = clock()
        window.saw(grants[0].window, remaining=0, ends_at=t0 + 0.3, ends_after=t0 - 0.7)
        denied = await window.take(limit=5, fallback_s=1.0, now=clock())
        assert not denied.granted
        await anyio.sleep(t0 + 0.35 - clock())
        after = [await window.take(limit=5, fallback_s=1.0, now=clock()) for _ in range(6)]
        assert [g.granted for g in after] == [True] * 5 + [False]
        assert after[0].window == grants[0].window + 1
    finally:
        await window.aclose()


async def test_a_late_grant_before_the_windows_earliest_end_is_not_charged() -> None:
    """Known to end no sooner than in 0.45 s (a longer window): a late grant is surely in it."""
    window, clock = await _window("early"), anyio.current_time
    try:
        first = await window.take(limit=4, fallback_s=2.0, now=clock())
        t0 = clock()
        window.saw(first.window, remaining=3, ends_at=t0 + 0.5, ends_after=t0 + 0.45)
        await anyio.sleep(0.15)
        late = [await window.take(limit=4, fallback_s=2.0, now=clock()) for _ in range(3)]
        assert all(g.granted for g in late)
        await anyio.sleep(t0 + 0.55 - clock())
        after = [await window.take(limit=4, fallback_s=2.0, now=clock()) for _ in range(5)]
        assert [g.granted for g in after] == [True] * 4 + [False]
        assert after[0].window == first.window + 1
    finally:
        await window.aclose()


async def test_a_process_that_probed_and_ends_tells_the_others_the_limit() -> None:
    """The key's probe was one process's only request: closing, it tells the limit.

    Many small units (one page each) on many workers: the first worker's request
    is the probe, the others wait for its answer. It reported the limit only with
    its next turn, which never came, so every other process waited the probe's
    whole hold (10 s by default) before the first page of theirs went.
    """
    first, second = await _window("probe-ends"), await _window("probe-ends")
    second.key = first.key
    clock = anyio.current_time
    try:
        probe = await first.take(limit=None, fallback_s=1.0, now=clock())
        assert probe.granted
        t0 = clock()
        first.saw(probe.window, remaining=9, ends_at=t0 + 1.0, ends_after=t0)
        await first.aclose(now=clock(), limit=10)
        after = await second.take(limit=None, fallback_s=1.0, now=clock())
        assert after.granted
    finally:
        await second.aclose()


async def test_an_export_of_one_page_leaves_the_limit_it_learned_for_the_others() -> None:
    """A one-page export with --shared-limiter: the shared state knows the key's limit after it."""
    from redis.asyncio import Redis  # noqa: PLC0415

    config = SimulatorConfig(team_size=5, rate_limit=7, rate_window_s=1.0, reset_format="seconds")
    async with serve(config) as sim:
        summary = await export(
            spec_for(sim), MemorySink(), api_key=KEY, base_url=sim.base_url, shared_limiter=REDIS
        )
        assert summary.ok and sim.stats.requests >= 1
        redis = Redis.from_url(REDIS)
        try:
            limit = await redis.hget(shared_key(KEY, sim.base_url), "limit")
        finally:
            await redis.aclose()
    assert limit == b"7"


async def test_a_report_is_counted_once_when_turns_overlap() -> None:
    """Many workers ask at once: the report they carry is sent with one call only.

    Every waiting worker's call read the same report before any had come back,
    so a refund was applied once per call: 16 more requests were let into a
    window the server had already filled (16 refused in one run of
    test_two_clients_on_one_key_share_one_window).
    """
    window, clock = await _window("once"), anyio.current_time
    try:
        grants = [await window.take(limit=4, fallback_s=5.0, now=clock()) for _ in range(4)]
        # Two were counted in the server's next window; nobody had charged them there.
        window.saw(grants[0].window, remaining=0, ends_at=clock() + 0.2)
        window.saw(grants[0].window, remaining=3, ends_at=None, later=True)
        window.saw(grants[0].window, remaining=2, ends_at=None, later=True)
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(lambda: window.take(limit=4, fallback_s=5.0, now=clock()))
        await anyio.sleep(0.25)
        after = [await window.take(limit=4, fallback_s=5.0, now=clock()) for _ in range(3)]
        assert [g.granted for g in after] == [True, True, False]  # 4 - 2, not 4 - 16
    finally:
        await window.aclose()


async def _charged_twice(window: SharedWindow, clock: Any) -> tuple[list[Any], float]:
    """A probe whose reset reads "1", then 3 grants charged to the window after it too."""
    probe = await window.take(limit=None, fallback_s=1.0, now=clock())
    t0 = clock()
    window.saw(probe.window, remaining=3, ends_at=t0 + 0.3, ends_after=t0 - 0.7)
    late = [await window.take(limit=4, fallback_s=1.0, now=clock()) for _ in range(3)]
    assert all(g.granted and g.charged_next and g.window == probe.window for g in late)
    return late, t0


async def test_a_request_charged_to_the_next_window_and_counted_there_is_charged_once() -> None:
    """Granted near the end, counted in the next window: one charge there, not two."""
    window, clock = await _window("twice-later"), anyio.current_time
    try:
        late, t0 = await _charged_twice(window, clock)
        for g, left in zip(late, (3, 2, 1), strict=True):  # counted by the server's next window
            window.saw(g.window, remaining=left, ends_at=None, later=True, charged_next=True)
        await window.take(limit=4, fallback_s=1.0, now=clock())  # carries the report
        await anyio.sleep(t0 + 0.35 - clock())
        after = [await window.take(limit=4, fallback_s=1.0, now=clock()) for _ in range(2)]
        assert [g.granted for g in after] == [True, False]  # 4 - 3, not 4 - 6
    finally:
        await window.aclose()


async def test_a_request_charged_to_the_next_window_but_counted_in_its_own_is_given_back() -> None:
    """Granted near the end but counted in its own window (its remaining says so): given back.

    A late start: the first answer's reset of "1" says the window ends within a
    second, so every request after it is charged to the next window too. Their
    answers show the server counted them in this one; without the refund the
    next window opened with most of its quota spent (19 of 20 in (h)).
    """
    window, clock = await _window("refund"), anyio.current_time
    try:
        late, t0 = await _charged_twice(window, clock)
        assert late[0].said_remaining == 3  # what the probe's answer said, for the next
        for g, left in zip(late, (2, 1, 0), strict=True):
            window.saw(
                g.window, remaining=left, ends_at=t0 + 0.3, charged_next=True, surely_here=True
            )
        await anyio.sleep(t0 + 0.35 - clock())
        after = [await window.take(limit=4, fallback_s=1.0, now=clock()) for _ in range(5)]
        assert [g.granted for g in after] == [True] * 4 + [False]
    finally:
        await window.aclose()


async def test_answers_counted_in_the_next_window_tell_its_end_and_budget() -> None:
    """The next window's end comes from the answers counted in it, not from a guessed length.

    Its quota was spent by requests granted in the window before (nothing of its
    own went to report its end): it used to end one assumed length after it
    began, inside the server's window, and the next quota went into a full window.
    """
    window, clock = await _window("next-end"), anyio.current_time
    try:
        grants = [await window.take(limit=3, fallback_s=0.2, now=clock()) for _ in range(3)]
        t0 = clock()
        window.saw(grants[0].window, remaining=2, ends_at=t0 + 0.1)
        for left in (2, 1, 0):  # all three counted by the server's next window
            window.saw(grants[0].window, remaining=left, ends_at=t0 + 0.6, later=True)
        await window.take(limit=3, fallback_s=0.2, now=clock())  # carries the report
        await anyio.sleep(t0 + 0.45 - clock())  # past the fallback length: still spent
        held = await window.take(limit=3, fallback_s=0.2, now=clock())
        assert not held.granted and held.window == grants[0].window + 1
        assert 0.1 < held.wait_s <= 0.16  # until the end its answers told
        await anyio.sleep(held.wait_s + 0.02)
        assert (await window.take(limit=3, fallback_s=0.2, now=clock())).granted
    finally:
        await window.aclose()


class _GrantsAll:
    """A shared budget that grants every turn in its window 1 and keeps what is reported.

    Granted with ``ends_in_s`` to the window's sure end, after another process's
    answer said ``said`` of it: what a process's first request carries.
    """

    probe_s = 10.0

    def __init__(self, *, ends_in_s: float, said: int) -> None:
        self.grant = Grant(
            True, 0.0, 1, charged_next=True, said_remaining=said, ends_in_s=ends_in_s
        )
        self.reports: list[dict[str, Any]] = []
        self.waiting = 0  # reports not sent yet
        self.told: list[int] = []  # reports sent by tell(), taking no turn

    async def take(self, **_: Any) -> Grant:
        self.waiting = 0  # a turn carries the reports
        return self.grant

    def saw(self, window: int, **report: Any) -> None:
        self.reports.append({"window": window, **report})
        self.waiting += 1

    @property
    def telling(self) -> bool:
        return self.waiting > 0

    async def tell(self, **_: Any) -> None:
        self.told.append(self.waiting)
        self.waiting = 0

    def pause(self, seconds: float) -> None:
        pass

    async def aclose(self, **_: Any) -> None:
        pass


@pytest.mark.parametrize(("reset", "later"), [("2", True), ("1", False)])
async def test_a_first_answer_whose_window_ends_after_the_granted_one_was_counted_later(
    reset: str, later: bool
) -> None:
    """A process's first answer, its window's end after the shared window's: counted later.

    The shared window's sure end is 0.5 s after the grant; another process said 19
    were left of it. Our first answer says 17 left: below 19, it looks counted in
    the granted window (and, charged to the next too, would be given back there).
    Its reset says otherwise when the window it was counted in cannot end before
    the granted one's end ("2" whole seconds, read 0.1 s after the send: the end is
    at least 1 s after the send): it was counted in the next window, which the
    others must hear (nothing given back; what it says is the next window's). With
    "1" the end may be the granted window's: counted there, given back.
    """
    clock = FakeClock()
    shared = _GrantsAll(ends_in_s=0.5, said=19)
    limiter = _shared_limiter(clock, shared)
    async with clock.running():
        async with limiter.slot() as ticket:
            await clock.sleep(0.1)
        limiter.observe(200, _answer(17, reset=reset), ticket)
    [report] = shared.reports
    assert report["window"] == 1 and report["remaining"] == 17
    assert report["later"] is later
    assert report["surely_here"] is not later


def _shared_limiter(clock: FakeClock, shared: _GrantsAll) -> Limiter:
    return Limiter(
        clock=clock,
        wall_clock=clock.wall,
        sleep=clock.sleep,
        shared=shared,  # type: ignore[arg-type]
        max_in_flight=16,
        max_auto_in_flight=32,
    )


def _answer(remaining: int, *, reset: str = "1") -> dict[str, str]:
    return {
        "x-ratelimit-limit": "20",
        "x-ratelimit-remaining": str(remaining),
        "x-ratelimit-reset": reset,
    }


async def test_the_first_window_left_to_a_process_goes_at_once_with_the_shared_budget() -> None:
    """Its first answer left it the rest of a window that ends within a second: all in flight.

    Held at 16 in flight, the last 3 of 19 waited a round trip, past the window's
    end, and a run that started late in a window took one more window. The shared
    budget still grants each of them.
    """
    clock = FakeClock()
    limiter = _shared_limiter(clock, _GrantsAll(ends_in_s=0.9, said=19))
    async with clock.running():
        async with limiter.slot() as ticket:
            await clock.sleep(0.1)
        limiter.observe(200, _answer(19), ticket)
    assert limiter.max_in_flight == 20


async def test_a_process_waiting_for_its_next_window_tells_the_others_what_it_heard() -> None:
    """What the answers said goes to the shared budget even when no turn is asked for.

    A process that spent its share asks for no turn until its next window, and the
    others, without its report of where the window ends, fell back on a guessed
    length: 1 s on a 2 s window, and 16 of the next quota refused.
    """
    clock = FakeClock()
    shared = _GrantsAll(ends_in_s=1.9, said=20)
    limiter = _shared_limiter(clock, shared)
    async with clock.running():
        tickets = []
        for _ in range(2):
            async with limiter.slot() as ticket:
                tickets.append(ticket)
        await clock.sleep(0.1)
        for ticket, left in zip(tickets, (1, 0), strict=True):
            limiter.observe(200, _answer(left, reset="2"), ticket)
        assert shared.waiting == 2 and not shared.told
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_one_more, limiter)
                await clock.sleep(0.2)  # the third waits for the window to end
                scope.cancel()
    assert shared.told == [2]


async def _one_more(limiter: Limiter) -> None:
    async with limiter.slot():
        pass


async def test_what_one_process_tells_taking_no_turn_reaches_the_others_grants() -> None:
    """``tell``: a report sent without a turn; the next process's grant knows the window's end."""
    first, second = await _window("tell"), await _window("tell")
    second.key = first.key
    try:
        grant = await first.take(limit=5, fallback_s=1.0, now=0.0)
        assert (await second.take(limit=5, fallback_s=1.0, now=0.0)).ends_in_s is None
        first.saw(grant.window, remaining=3, ends_at=1.5)
        assert first.telling
        await first.tell(limit=5, fallback_s=1.0, now=0.0)
        assert not first.telling
        after = await second.take(limit=5, fallback_s=1.0, now=0.0)
        assert after.granted and after.said_remaining == 3
        assert after.ends_in_s == pytest.approx(1.5, abs=0.1)
    finally:
        await first.aclose()
        await second.aclose()


async def test_reports_of_two_windows_waiting_together_are_both_sent() -> None:
    """An answer of the window before arrives with the current one's: neither is dropped.

    One report was kept, of the newest window: a request of window w counted in
    w + 1 (to charge there) was lost when an answer of w + 1 came before the next
    call, and w + 1 let one too many go.
    """
    window, clock = await _window("two-reports"), anyio.current_time
    try:
        t0 = clock()
        first = [await window.take(limit=3, fallback_s=5.0, now=clock()) for _ in range(3)]
        window.saw(first[0].window, remaining=0, ends_at=t0 + 0.2)
        assert not (await window.take(limit=3, fallback_s=5.0, now=clock())).granted
        await anyio.sleep(t0 + 0.25 - clock())
        opened = await window.take(limit=3, fallback_s=5.0, now=clock())
        assert opened.granted and opened.window == first[0].window + 1
        window.saw(first[1].window, remaining=None, ends_at=None, later=True)  # counted in w + 1
        window.saw(opened.window, remaining=None, ends_at=None)
        rest = [await window.take(limit=3, fallback_s=5.0, now=clock()) for _ in range(2)]
        assert [g.granted for g in rest] == [True, False]  # 3 in w + 1: opened, the late one, 1
    finally:
        await window.aclose()
