import random

import pytest

from fetcher.errors import (
    AuthError,
    ConnectionLostError,
    InvalidJSONError,
    RateLimitedError,
    RequestRejectedError,
    RequestTimeoutError,
    ServerError,
    ShapeError,
    TLSError,
)
from fetcher.http.retry import RetryPolicy, parse_retry_after
from tests.fakes import FakeClock


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (RateLimitedError("429", status=429), True),
        (ServerError("500", status=500), True),
        (ServerError("408", status=408), True),
        (RequestTimeoutError("slow"), True),
        (ConnectionLostError("reset"), True),
        (InvalidJSONError("cut"), True),
        (ShapeError("odd"), True),
        (AuthError("key", status=400), False),
        (RequestRejectedError("bad", status=400), False),
        (RequestRejectedError("gone", status=404), False),
        (TLSError("cert"), False),
        (ValueError("bug"), False),
    ],
)
def test_what_is_retried(error: Exception, retried: bool) -> None:
    """The declared policy retries transient failures and nothing else."""
    assert RetryPolicy.should_retry(error) is retried


def test_backoff_is_full_jitter_within_a_growing_capped_ceiling() -> None:
    """Backoff n is uniform in [0, min(max, base * 2**(n-1))]."""
    policy = RetryPolicy(backoff_base_s=0.5, backoff_max_s=4.0)
    rng = random.Random(1)
    for retry, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (12, 4.0)]:
        waits = [policy.backoff(retry, rng) for _ in range(400)]
        assert all(0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling * 0.9  # the whole range is used...
        assert min(waits) < ceiling * 0.1  # ...down to zero (full jitter)


def test_retry_after_wins_over_the_formula_within_the_cap() -> None:
    """A positive Retry-After is the wait, capped at max_retry_after_s."""
    policy = RetryPolicy(max_retry_after_s=60)
    rng = random.Random(0)
    assert policy.wait(1, RateLimitedError("x", status=429, retry_after=7.5), rng) == 7.5
    assert policy.wait(1, RateLimitedError("x", status=429, retry_after=10**9), rng) == 60


@pytest.mark.parametrize("retry_after", [0.0, -5.0])
def test_zero_or_negative_retry_after_falls_back_to_backoff(retry_after: float) -> None:
    """Retry-After: 0 (or negative) cannot make fetcher hot-loop."""
    policy = RetryPolicy(backoff_base_s=1.0)
    rng = random.Random(3)
    error = RateLimitedError("x", status=429, retry_after=retry_after)
    waits = {policy.wait(1, error, rng) for _ in range(50)}
    assert len(waits) > 1  # jittered backoff, not a constant zero


def test_parse_retry_after_seconds_and_dates() -> None:
    """Retry-After is read as seconds or as an HTTP date relative to now."""
    assert parse_retry_after("12") == 12
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("inf") is None
    now = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:50 GMT", now=now) == pytest.approx(30)


async def test_retry_loop_on_a_fake_clock() -> None:
    """The loop retries until success, waiting what the policy says, on virtual time."""
    clock = FakeClock()
    policy = RetryPolicy(attempts=5, backoff_base_s=1.0, backoff_max_s=8.0)
    outcomes: list[Exception | None] = [
        ServerError("500", status=500),
        RateLimitedError("429", status=429, retry_after=3.0),
        None,
    ]
    seen: list[tuple[int, str, float]] = []
    calls = 0
    async with clock.running():
        retrying = policy.retrying(
            clock=clock,
            sleep=clock.sleep,
            rng=random.Random(7),
            on_retry=lambda n, e, w: seen.append((n, type(e).__name__, w)),
        )
        async for attempt in retrying:
            with attempt:
                calls += 1
                outcome = outcomes.pop(0)
                if outcome is not None:
                    raise outcome
    assert calls == 3
    assert [s[:2] for s in seen] == [(2, "ServerError"), (3, "RateLimitedError")]
    assert 0 <= seen[0][2] <= 1.0
    assert seen[1][2] == 3.0
    assert clock.sleeps == [seen[0][2], 3.0]


async def test_gives_up_after_the_attempts_and_reraises_the_last_error() -> None:
    """After `attempts` tries the page's last error is raised, not a wrapper."""
    clock = FakeClock()
    calls = 0
    async with clock.running():
        with pytest.raises(ServerError, match="third"):
            async for attempt in RetryPolicy(attempts=3).retrying(clock=clock, sleep=clock.sleep):
                with attempt:
                    calls += 1
                    raise ServerError(["first", "second", "third"][calls - 1], status=503)
    assert calls == 3


async def test_deadline_stops_before_a_wait_that_would_pass_it() -> None:
    """A page gives up when the next wait would end after its deadline."""
    clock = FakeClock()
    calls = 0
    async with clock.running():
        with pytest.raises(RateLimitedError):
            async for attempt in RetryPolicy(attempts=50, deadline_s=25).retrying(
                clock=clock, sleep=clock.sleep
            ):
                with attempt:
                    calls += 1
                    raise RateLimitedError("429", status=429, retry_after=10)
    assert calls == 3  # waits end at 10 and 20; a third would end at 30 > 25
    assert clock.sleeps == [10, 10]


async def test_errors_that_are_not_retried_fail_at_once() -> None:
    """An auth error is raised on the first try with no wait."""
    clock = FakeClock()
    calls = 0
    async with clock.running():
        with pytest.raises(AuthError):
            async for attempt in RetryPolicy().retrying(clock=clock, sleep=clock.sleep):
                with attempt:
                    calls += 1
                    raise AuthError("refused", status=400)
    assert calls == 1
    assert clock.sleeps == []


def test_policy_rejects_nonsense() -> None:
    """Zero attempts or negative times are configuration errors."""
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="deadline_s"):
        RetryPolicy(deadline_s=-1)
