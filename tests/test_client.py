"""Unit tests of one page's life: request, status mapping, retries, limiter feedback."""

import datetime as dt
import re

import orjson
import pytest
from aioresponses import aioresponses

from fetcher.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    InvalidJSONError,
    RateLimitedError,
    RequestRejectedError,
    ServerError,
)
from fetcher.http.client import TEAM_STATS_PATH
from fetcher.http.limiter import Limiter
from fetcher.http.retry import RetryPolicy
from fetcher.run.client import Client
from fetcher.spec import QuerySpec

BASE = "https://api.test"
URL = BASE + TEAM_STATS_PATH
KEY = "sk-live-SECRET-123"
SPEC = QuerySpec(
    user_ids=("a", "b"),
    start=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    end=dt.datetime(2024, 1, 31, 23, 59, 59, 999000, tzinfo=dt.UTC),
    type="prospect",
    page_size=2,
)
PAGE = {
    "message": "ok",
    "payload": {
        "data": [{"userId": "a", "prospectAdded": "4"}, {"userId": "b", "prospectAdded": 2}],
        "meta": {"totalItems": 2, "totalPages": 1, "currentPage": 1},
    },
}
FAST = RetryPolicy(attempts=3, backoff_base_s=0.001, backoff_max_s=0.001)


def client(**options: object) -> Client:
    options.setdefault("retry", FAST)
    # Refusals without Retry-After pause briefly here, not the default second.
    options.setdefault("limiter", Limiter(default_pause_s=0.001))
    return Client(api_key=KEY, base_url=BASE, **options)  # type: ignore[arg-type]


async def test_request_carries_key_header_and_documented_body() -> None:
    """The page request is a POST with x-api-key and the reference page's JSON body."""
    with aioresponses() as mocked:
        mocked.post(URL, payload=PAGE)
        async with client() as c:
            page = await c.fetch_page(SPEC, 1)
        ((_, calls),) = mocked.requests.items()
    sent = calls[0].kwargs
    assert sent["headers"]["x-api-key"] == KEY
    assert sent["headers"]["content-type"] == "application/json"
    assert orjson.loads(sent["data"]) == SPEC.body(1)
    assert sent["allow_redirects"] is False
    assert page.records[0] == {"userId": "a", "prospectAdded": 4}
    assert page.attempts == 1


@pytest.mark.parametrize(
    ("status", "body", "error", "fragment"),
    [
        (400, {"type": "auth", "message": "Invalid token"}, AuthError, "refused the key"),
        (401, {"message": "Unauthorized"}, AuthError, "refused the key"),
        (400, {"message": "Rate Limit exceeded"}, RateLimitedError, "rate limited"),
        (429, {"message": "ThrottlerException: Too Many Requests"}, RateLimitedError, "429"),
        (
            500,
            {"message": "5001: Internal server error, please try again later"},
            ServerError,
            "5001",
        ),
        (503, "<html>Service Unavailable</html>", ServerError, "503"),
        (
            400,
            {"statusCode": 400, "message": ["limit must not be less than 1"]},
            RequestRejectedError,
            "limit must",
        ),
        (404, {"message": "Cannot POST"}, RequestRejectedError, "404"),
    ],
)
async def test_status_mapping(
    status: int, body: object, error: type[Exception], fragment: str
) -> None:
    """Each error answer maps to the error class that decides whether it is retried."""
    with aioresponses() as mocked:
        for _ in range(FAST.attempts):
            if isinstance(body, str):
                mocked.post(URL, status=status, body=body, content_type="text/html")
            else:
                mocked.post(URL, status=status, payload=body)
        async with client() as c:
            with pytest.raises(error, match=fragment) as info:
                await c.fetch_page(SPEC, 1)
    assert info.value.page is not None and info.value.page.page == 1  # type: ignore[attr-defined]
    expected_attempts = FAST.attempts if info.value.retryable else 1  # type: ignore[attr-defined]
    assert info.value.attempts == expected_attempts  # type: ignore[attr-defined]


async def test_auth_error_is_not_retried() -> None:
    """A refused key is raised after exactly one request."""
    with aioresponses() as mocked:
        mocked.post(
            URL, status=400, payload={"type": "auth", "message": "Invalid token"}, repeat=True
        )
        async with client() as c:
            with pytest.raises(AuthError):
                await c.fetch_page(SPEC, 1)
        assert sum(len(v) for v in mocked.requests.values()) == 1


async def test_transient_errors_are_retried_until_success() -> None:
    """A 503, a truncated body and a 429 are retried; the page then arrives once."""
    with aioresponses() as mocked:
        mocked.post(URL, status=503, body="<html>busy</html>")
        mocked.post(URL, status=200, body=orjson.dumps(PAGE)[:30], content_type="application/json")
        mocked.post(URL, status=429, headers={"retry-after": "0"}, payload={"message": "slow down"})
        mocked.post(URL, payload=PAGE)
        async with client(retry=RetryPolicy(attempts=4, backoff_base_s=0.001)) as c:
            page = await c.fetch_page(SPEC, 1)
    assert page.attempts == 4
    assert len(page.records) == 2


async def test_rate_limit_refusal_pauses_the_limiter() -> None:
    """A 429 with Retry-After tells the shared limiter to hold every worker."""
    with aioresponses() as mocked:
        mocked.post(URL, status=429, headers={"retry-after": "30"}, payload={"message": "x"})
        async with client(retry=RetryPolicy(attempts=1)) as c:
            with pytest.raises(RateLimitedError) as info:
                await c.fetch_page(SPEC, 1)
            assert info.value.retry_after == 30
            assert c.limiter.stats.refusals == 1
            assert c.limiter.waiting_until is not None


async def test_redirects_are_not_followed_with_the_key() -> None:
    """A 3xx is reported with its target; the key is not sent to the new host."""
    with aioresponses() as mocked:
        mocked.post(URL, status=301, headers={"location": "https://evil.example/steal"})
        async with client() as c:
            with pytest.raises(RequestRejectedError, match=r"evil\.example") as info:
                await c.fetch_page(SPEC, 1)
        assert all("evil" not in str(url) for _, url in mocked.requests)
    assert "--base-url" in str(info.value)


async def test_key_echoed_by_the_server_is_scrubbed_from_errors() -> None:
    """If an error body quotes the key, the error message and body do not."""
    with aioresponses() as mocked:
        mocked.post(URL, status=400, payload={"message": f"bad field for key {KEY}"})
        async with client() as c:
            with pytest.raises(RequestRejectedError) as info:
                await c.fetch_page(SPEC, 1)
    assert KEY not in str(info.value)
    assert KEY not in info.value.body
    assert KEY not in repr(c)


async def test_connection_errors_map_to_connect_error() -> None:
    """Aiohttp's connection errors do not leak; they become ConnectError."""
    async with Client(
        api_key=KEY, base_url="http://127.0.0.1:9", retry=RetryPolicy(attempts=1)
    ) as c:
        with pytest.raises(ConnectError, match="cannot connect") as info:
            await c.fetch_page(SPEC, 1)
    assert info.value.__cause__ is not None
    assert "aiohttp" in type(info.value.__cause__).__module__


async def test_invalid_json_after_retries_is_reported() -> None:
    """A body that stays unparseable fails the page with InvalidJSONError."""
    with aioresponses() as mocked:
        mocked.post(URL, body=b"{not json", repeat=True)
        async with client() as c:
            with pytest.raises(InvalidJSONError):
                await c.fetch_page(SPEC, 1)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"api_key": " "}, "api_key"),
        ({"concurrency": 0}, "concurrency"),
        ({"rate_limit": "fast"}, "rate_limit"),
    ],
)
def test_bad_client_options_are_config_errors(options: dict[str, object], field: str) -> None:
    """A blank key, zero concurrency or an unreadable rate fail before any request."""
    kwargs: dict[str, object] = {"api_key": KEY, **options}
    with pytest.raises(ConfigError) as info:
        Client(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


@pytest.mark.parametrize(
    ("options", "concurrency"),
    [
        ({}, 16),
        ({"rate_limit": "40/1s"}, 40),  # one window of the rate may go at once
        ({"rate_limit": "5/s"}, 16),  # raised, never lowered
        ({"rate_limit": "1000/s"}, 64),  # at most 64
        ({"rate_limit": "500/10s"}, 50),  # one second of the rate
        ({"rate_limit": "30/min"}, 16),  # a slow rate keeps the default
        ({"rate_limit": "20/2s"}, 16),
        ({"rate_limit": "40/1s", "concurrency": 8}, 8),  # an explicit value wins
    ],
)
def test_default_concurrency_follows_a_configured_rate(
    options: dict[str, object], concurrency: int
) -> None:
    """Without a concurrency, a configured rate's second sets how many requests may be in flight."""
    made = Client(api_key=KEY, **options)  # type: ignore[arg-type]
    assert made.concurrency == concurrency
    assert made.limiter.max_in_flight == concurrency


def test_pages_needs_the_client_entered() -> None:
    """Using pages() outside `async with` says how to use it."""
    with pytest.raises(RuntimeError, match="async with"):
        client().pages(SPEC)


async def test_rate_limit_headers_feed_the_limiter() -> None:
    """x-ratelimit-remaining: 0 on a success makes the limiter wait for the reset."""
    with aioresponses() as mocked:
        mocked.post(
            re.compile(re.escape(URL)),
            payload=PAGE,
            headers={
                "x-ratelimit-limit": "5",
                "x-ratelimit-remaining": "0",
                "x-ratelimit-reset": "20",
            },
        )
        async with client() as c:
            await c.fetch_page(SPEC, 1)
            assert c.limiter.waiting_until is not None
