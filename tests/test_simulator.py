"""The simulator, exercised over a real local port with a plain aiohttp client."""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, get_args

import aiohttp
import pytest
from multidict import CIMultiDict
from pydantic import ValidationError

import fetcher.simulator as simulator
from fetcher.simulator import (
    FAULT_KINDS,
    FaultKind,
    RunningSimulator,
    SimulatorConfig,
    build_team,
    serve,
)
from fetcher.simulator._ratelimit import FixedWindowLimiter
from fetcher.simulator._report import ReportEngine
from fetcher.simulator._validation import parse_body
from fetcher.spec import EMAIL_METRICS, METRICS_BY_TYPE, PROSPECT_METRICS

KEY = "sim-key"
STATS_PATH = "/v1/analytics/team/stats"
MEMBERS_PATH = "/v1/user/team-member-list"
JAN_START = "2024-01-01T00:00:00.000+00:00"
JAN_END = "2024-01-31T23:59:59.999+00:00"
_DELETE = object()


def make_body(user_ids: list[str], **overrides: Any) -> dict[str, Any]:
    """A valid request body; an override of _DELETE removes that field."""
    body: dict[str, Any] = {
        "userIds": user_ids,
        "startDate": JAN_START,
        "endDate": JAN_END,
        "countBy": "absolute",
        "limit": 10,
        "page": 1,
        "sortOrder": "desc",
        "orderBy": "prospectAdded",
        "type": "prospect",
    }
    for key, value in overrides.items():
        if value is _DELETE:
            del body[key]
        else:
            body[key] = value
    return body


class Answer:
    """What a client saw: status, headers and raw body."""

    def __init__(self, status: int, headers: CIMultiDict[str], raw: bytes) -> None:
        self.status = status
        self.headers = headers
        self.raw = raw

    def json(self) -> Any:
        return json.loads(self.raw)


async def post(
    session: aiohttp.ClientSession,
    sim: RunningSimulator,
    body: Any,
    *,
    key: str | None = KEY,
    raw: bytes | None = None,
) -> Answer:
    """POST a team-stats body (or raw bytes) and read the whole answer."""
    headers = {"x-api-key": key} if key is not None else {}
    kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
    async with session.post(sim.base_url + STATS_PATH, headers=headers, **kwargs) as resp:
        return Answer(resp.status, resp.headers.copy(), await resp.read())


async def members(session: aiohttp.ClientSession, sim: RunningSimulator, key: str = KEY) -> Answer:
    """GET the team member list."""
    async with session.get(sim.base_url + MEMBERS_PATH, headers={"x-api-key": key}) as resp:
        return Answer(resp.status, resp.headers.copy(), await resp.read())


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session, closed after the test."""
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    """A default simulator with a 30-member team."""
    async with serve(SimulatorConfig(team_size=30)) as running:
        yield running


async def fetch_all(
    session: aiohttp.ClientSession, sim: RunningSimulator, body: dict[str, Any]
) -> list[dict[str, Any]]:
    """Follow pages until an empty one; return every row."""
    rows: list[dict[str, Any]] = []
    page = 1
    while True:
        answer = await post(session, sim, {**body, "page": page})
        assert answer.status == 200
        data = answer.json()["payload"]["data"]
        if not data:
            return rows
        rows += data
        page += 1


async def eventually(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` until it holds; fail after two seconds."""
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail("condition never became true")


# -- public surface ------------------------------------------------------------------------------


def test_all_is_sorted_and_importable() -> None:
    """The package's __all__ is isort-sorted and every name in it exists."""

    def isort_key(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert simulator.__all__ == sorted(simulator.__all__, key=isort_key)
    for name in simulator.__all__:
        assert hasattr(simulator, name)


def test_config_is_frozen_strict_and_hides_keys() -> None:
    """SimulatorConfig rejects unknown fields, cannot be mutated and keeps keys out of repr."""
    config = SimulatorConfig(api_keys=("top-secret",))
    assert "top-secret" not in repr(config)
    with pytest.raises(ValidationError):
        SimulatorConfig(colour="blue")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        config.seed = 3  # type: ignore[misc]
    with pytest.raises(ValidationError, match="fault_rate"):
        SimulatorConfig(fault_rate=1.5)
    assert config.fault_kinds == FAULT_KINDS


def test_build_team_is_deterministic_and_unique() -> None:
    """build_team gives unique 10-char base62 ids and emails, identical for the same seed."""
    team = build_team(7, 500)
    assert team == build_team(7, 500)
    assert team != build_team(8, 500)
    assert build_team(7, 3) == team[:3]
    assert all(re.fullmatch(r"[0-9A-Za-z]{10}", m.user_id) for m in team)
    assert len({m.user_id for m in team}) == 500
    assert len({m.email for m in team}) == 500
    assert build_team(0, 0) == ()
    with pytest.raises(ValueError, match="size"):
        build_team(0, -1)


# -- auth and validation -------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "", "wrong-key"])
async def test_auth_failure_is_400_invalid_token(
    session: aiohttp.ClientSession, sim: RunningSimulator, key: str | None
) -> None:
    """A missing or wrong x-api-key gets HTTP 400 {"type": "auth", "message": "Invalid token"}."""
    answer = await post(session, sim, make_body(sim.user_ids), key=key)
    assert answer.status == 400
    assert answer.json() == {"type": "auth", "message": "Invalid token"}
    assert sim.stats.kinds["auth"] == 1


async def test_any_configured_key_is_accepted(session: aiohttp.ClientSession) -> None:
    """Every key in api_keys authenticates."""
    async with serve(SimulatorConfig(team_size=3, api_keys=("a", "b"))) as running:
        for key in ("a", "b"):
            assert (
                await post(session, running, make_body(running.user_ids), key=key)
            ).status == 200


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        *[({name: _DELETE}, name) for name in ("startDate", "endDate", "countBy", "limit")],
        *[({name: _DELETE}, name) for name in ("page", "sortOrder", "orderBy", "type")],
        ({"userIds": _DELETE}, "userIds"),
        ({"colour": "blue"}, "colour"),
        ({"userIds": []}, "userIds"),
        ({"userIds": [""]}, "userIds"),
        ({"userIds": "abc"}, "userIds"),
        ({"userIds": [1, 2]}, "userIds"),
        ({"startDate": "2024-01-01T00:00:00"}, "startDate"),
        ({"startDate": "2024-01-01"}, "startDate"),
        ({"startDate": "yesterday"}, "startDate"),
        ({"endDate": 20240131}, "endDate"),
        ({"startDate": "2024-02-01T00:00:00.000+00:00"}, "startDate"),
        ({"countBy": "monthly"}, "countBy"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "10"}, "limit"),
        ({"limit": 10.0}, "limit"),
        ({"limit": True}, "limit"),
        ({"page": 0}, "page"),
        ({"page": "1"}, "page"),
        ({"page": None}, "page"),
        ({"sortOrder": "up"}, "sortOrder"),
        ({"orderBy": "emailSent"}, "orderBy"),
        ({"orderBy": "nope", "type": "email"}, "orderBy"),
        ({"type": "calls"}, "type"),
    ],
)
async def test_validation_error_names_its_field(
    session: aiohttp.ClientSession,
    sim: RunningSimulator,
    overrides: dict[str, Any],
    field: str,
) -> None:
    """Each invalid body gets a NestJS-style 400 whose message names the offending field."""
    answer = await post(session, sim, make_body(sim.user_ids, **overrides))
    assert answer.status == 400
    problem = answer.json()
    assert problem["statusCode"] == 400
    assert problem["error"] == "Bad Request"
    assert field in problem["message"]
    assert sim.stats.kinds == {"invalid": 1}


@pytest.mark.parametrize("raw", [b"[]", b'"x"', b"not json", b""])
async def test_body_must_be_a_json_object(
    session: aiohttp.ClientSession, sim: RunningSimulator, raw: bytes
) -> None:
    """A body that is not a JSON object is a 400 naming the body."""
    answer = await post(session, sim, None, raw=raw)
    assert answer.status == 400
    assert answer.json()["message"] == "body must be a JSON object"


async def test_page_is_revalidated_for_a_known_query(
    session: aiohttp.ClientSession, sim: RunningSimulator
) -> None:
    """A bad page is still rejected after the same query was answered for a good one."""
    assert (await post(session, sim, make_body(sim.user_ids, page=1))).status == 200
    answer = await post(session, sim, make_body(sim.user_ids, page=-3))
    assert answer.status == 400
    assert "page" in answer.json()["message"]


async def test_max_page_size_is_configurable(session: aiohttp.ClientSession) -> None:
    """A limit above max_page_size is a 400; at it, a 200."""
    async with serve(SimulatorConfig(team_size=3, max_page_size=50)) as running:
        assert (await post(session, running, make_body(running.user_ids, limit=50))).status == 200
        answer = await post(session, running, make_body(running.user_ids, limit=51))
        assert answer.status == 400
        assert "limit must not be greater than 50" in answer.json()["message"]


async def test_expected_rows_rejects_an_invalid_body(sim: RunningSimulator) -> None:
    """expected_rows raises ValueError for a body the API would answer with 400."""
    with pytest.raises(ValueError, match="orderBy"):
        sim.expected_rows(make_body(sim.user_ids, orderBy="emailSent"))


# -- paging, sorting, rows -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("team_size", "limit"), [(24, 1), (24, 5), (24, 6), (24, 24), (24, 100), (0, 10)]
)
async def test_paging_covers_the_team_exactly_once(
    session: aiohttp.ClientSession, team_size: int, limit: int
) -> None:
    """Pages partition the sorted rows, meta is exact, and a page past the end is empty."""
    async with serve(SimulatorConfig(team_size=team_size)) as running:
        body = make_body(running.user_ids or ["nobody"], limit=limit)
        total_pages = math.ceil(team_size / limit)
        rows: list[dict[str, Any]] = []
        for page in range(1, total_pages + 2):
            payload = (await post(session, running, {**body, "page": page})).json()["payload"]
            data = payload["data"]
            assert payload["meta"] == {
                "totalItems": team_size,
                "itemCount": len(data),
                "itemsPerPage": limit,
                "totalPages": total_pages,
                "currentPage": page,
            }
            if page <= total_pages:
                assert len(data) == min(limit, team_size - (page - 1) * limit)
            else:
                assert data == []
            rows += data
        assert len({row["userId"] for row in rows}) == len(rows)
        assert sorted(row["userId"] for row in rows) == sorted(running.user_ids)
        assert rows == running.expected_rows(body)


async def test_unknown_and_duplicate_user_ids_are_ignored(
    session: aiohttp.ClientSession, sim: RunningSimulator
) -> None:
    """Ids not in the team are silently dropped and repeated ids give one row."""
    wanted = sim.user_ids[:5]
    body = make_body([*wanted, "NotAMember", wanted[0]], limit=100)
    payload = (await post(session, sim, body)).json()["payload"]
    assert payload["meta"]["totalItems"] == 5
    assert sorted(row["userId"] for row in payload["data"]) == sorted(wanted)


@pytest.mark.parametrize("report_type", ["prospect", "email"])
async def test_rows_carry_names_and_every_metric_of_the_type(
    session: aiohttp.ClientSession, sim: RunningSimulator, report_type: str
) -> None:
    """A row is userId, firstName, lastName, email and one int per metric of its type."""
    order_by = METRICS_BY_TYPE[report_type][0]
    body = make_body(sim.user_ids, type=report_type, orderBy=order_by, limit=100)
    rows = (await post(session, sim, body)).json()["payload"]["data"]
    by_id = {m.user_id: m for m in sim.team}
    for row in rows:
        member = by_id[row["userId"]]
        assert list(row) == [
            "userId",
            "firstName",
            "lastName",
            "email",
            *METRICS_BY_TYPE[report_type],
        ]
        assert (row["firstName"], row["lastName"], row["email"]) == (
            member.first_name,
            member.last_name,
            member.email,
        )
        assert all(type(row[m]) is int and row[m] >= 0 for m in METRICS_BY_TYPE[report_type])


@pytest.mark.parametrize("sort_order", ["asc", "desc"])
@pytest.mark.parametrize("order_by", ["prospectAdded", "Closed", "clicked"])
async def test_sort_order_and_user_id_tie_break(
    session: aiohttp.ClientSession, sort_order: str, order_by: str
) -> None:
    """Rows sort by orderBy in sortOrder; ties (which do occur) break by userId ascending."""
    async with serve(SimulatorConfig(team_size=80, seed=3)) as running:
        body = make_body(running.user_ids, orderBy=order_by, sortOrder=sort_order, limit=7)
        rows = await fetch_all(session, running, body)
    sign = -1 if sort_order == "desc" else 1
    keys = [(sign * row[order_by], row["userId"]) for row in rows]
    assert keys == sorted(keys)
    values = [row[order_by] for row in rows]
    assert len(set(values)) < len(values), "the data must contain ties for this test to bite"


async def test_counts_are_funnel_shaped_additive_and_count_by_sensitive() -> None:
    """Counts never exceed their parent, add up over adjacent windows, and differ by countBy."""
    async with serve(SimulatorConfig(team_size=60, seed=11)) as running:
        ids = running.user_ids

        def rows(**overrides: Any) -> dict[str, dict[str, Any]]:
            body = make_body(ids, type="email", orderBy="emailSent", **overrides)
            return {row["userId"]: row for row in running.expected_rows(body)}

        mid = "2024-01-16T07:30:00.000+00:00"
        whole, first, second = rows(), rows(endDate=mid), rows(startDate=mid)
        for user_id, row in whole.items():
            for metric in EMAIL_METRICS:
                assert row[metric] == first[user_id][metric] + second[user_id][metric]
            assert row["opened"] <= row["emailSent"]
            assert row["clicked"] <= row["opened"]
            assert row["prospectContacted"] <= row["emailSent"]
        relative = rows(countBy="relative")
        assert relative != whole
        empty = rows(startDate=JAN_START, endDate=JAN_START)
        assert all(row[m] == 0 for row in empty.values() for m in EMAIL_METRICS)
        prospect = running.expected_rows(make_body(ids, limit=100))
        for row in prospect:
            assert row["opened"] <= row["prospectContacted"] <= row["prospectAdded"]
            assert set(row) >= set(PROSPECT_METRICS)


def test_report_cache_is_bounded_and_recomputes_identically() -> None:
    """The row cache drops least recently used queries beyond its row budget; results stay equal."""
    team = build_team(2, 10)
    engine = ReportEngine(2, team, cache_rows=15)
    ids = [m.user_id for m in team]
    january, _ = parse_body(make_body(ids), max_page_size=1000)
    february, _ = parse_body(
        make_body(ids, startDate="2024-02-01T00:00:00+00:00", endDate="2024-02-29T00:00:00+00:00"),
        max_page_size=1000,
    )
    first = engine.result(january)
    assert engine.result(january) is first
    engine.result(february)  # 20 rows > 15: january is dropped
    again = engine.result(january)
    assert again is not first
    assert again == first


def test_drift_grows_rows_whose_user_id_and_sort_field_are_not_served() -> None:
    """Drift with drop_fields (userId, the order field) grows the full rows, serves the rest."""
    team = build_team(3, 12)
    dropped = frozenset({"userId", "prospectAdded"})
    engine = ReportEngine(3, team, drop_fields=dropped)
    query, _ = parse_body(make_body([m.user_id for m in team]), max_page_size=1000)
    base = engine.result(query)
    grown = engine.drifted(query, 5.0, served=4)
    assert len(grown.rows) == len(base.rows) == 12
    assert all(dropped.isdisjoint(row) for row in grown.rows)
    assert sum(r["prospectContacted"] for r in grown.full) > sum(
        r["prospectContacted"] for r in base.full
    )
    assert {r["userId"] for r in grown.full} == {m.user_id for m in team}


# -- envelopes and encodings ---------------------------------------------------------------------

_EXTRACT: dict[str, Callable[[dict[str, Any]], tuple[list[Any], dict[str, Any] | None]]] = {
    "data": lambda b: (b["payload"]["data"], b["payload"]["meta"]),
    "items": lambda b: (b["payload"]["items"], b["payload"]["meta"]),
    "array": lambda b: (b["payload"], None),
    "nested": lambda b: (b["payload"]["payload"], b["payload"]["meta"]),
    "named": lambda b: (b["payload"]["teamStats"], b["payload"]["meta"]),
}


@pytest.mark.parametrize("envelope", list(_EXTRACT))
async def test_each_envelope_places_rows_and_meta(
    session: aiohttp.ClientSession, envelope: Any
) -> None:
    """Each envelope puts the rows (and meta, except "array") where KNOWN.md says."""
    async with serve(SimulatorConfig(team_size=12, envelope=envelope)) as running:
        body = make_body(running.user_ids, limit=5, page=2)
        document = (await post(session, running, body)).json()
        expected = running.expected_rows(body)[5:10]
    assert document["message"] == "Team stats fetched successfully"
    rows, meta = _EXTRACT[envelope](document)
    assert rows == expected
    if envelope == "array":
        assert isinstance(document["payload"], list)
    else:
        assert meta is not None
        assert meta["totalPages"] == 3
        assert meta["currentPage"] == 2


async def test_string_counts_render_counts_and_meta_as_strings(
    session: aiohttp.ClientSession,
) -> None:
    """With string_counts every metric and meta number is a JSON string of the same value."""
    async with serve(SimulatorConfig(team_size=8, string_counts=True)) as running:
        body = make_body(running.user_ids, limit=5)
        payload = (await post(session, running, body)).json()["payload"]
        expected = running.expected_rows(body)[:5]
    assert payload["meta"] == {
        "totalItems": "8",
        "itemCount": "5",
        "itemsPerPage": "5",
        "totalPages": "2",
        "currentPage": "1",
    }
    for row, want in zip(payload["data"], expected, strict=True):
        for metric in PROSPECT_METRICS:
            assert row[metric] == str(want[metric])
            assert type(want[metric]) is int
        assert row["userId"] == want["userId"]


async def test_same_seed_same_bytes_other_seed_other_data(session: aiohttp.ClientSession) -> None:
    """Two servers with the same seed answer byte for byte alike; another seed differs."""
    answers: list[bytes] = []
    teams = []
    for seed in (5, 5, 6):
        async with serve(SimulatorConfig(team_size=20, seed=seed)) as running:
            teams.append(running.team)
            body = make_body(running.user_ids, limit=20)
            answers.append((await post(session, running, body)).raw)
    assert answers[0] == answers[1]
    assert teams[0] == teams[1]
    assert teams[0] != teams[2]
    assert answers[0] != answers[2]


# -- rate limiting -------------------------------------------------------------------------------


async def test_rate_limit_headers_429_and_window_reset(session: aiohttp.ClientSession) -> None:
    """Every answer has x-ratelimit-*; over the limit 429 + retry-after; a new window refills."""
    config = SimulatorConfig(team_size=5, rate_limit=3, rate_window_s=0.6)
    async with serve(config) as running:
        good = make_body(running.user_ids)
        answers = [
            await post(session, running, good),
            await post(session, running, make_body(running.user_ids, limit=0)),
            await members(session, running),
        ]
        assert [a.status for a in answers] == [200, 400, 200]
        assert [a.headers["x-ratelimit-remaining"] for a in answers] == ["2", "1", "0"]
        assert all(a.headers["x-ratelimit-limit"] == "3" for a in answers)
        refused = [await post(session, running, good) for _ in range(2)]
        for answer in refused:
            assert answer.status == 429
            assert answer.json() == {"message": "ThrottlerException: Too Many Requests"}
            assert answer.headers["retry-after"] == "1"
            assert answer.headers["x-ratelimit-remaining"] == "0"
        await asyncio.sleep(0.65)
        # Refused requests did not use up the next window's quota.
        again = await post(session, running, good)
        assert again.status == 200
        assert again.headers["x-ratelimit-remaining"] == "2"
        assert running.stats.rate_limited == 2
        assert running.stats.kinds["rate_limited"] == 2


async def test_rate_limit_can_answer_400(session: aiohttp.ClientSession) -> None:
    """With rate_limit_status=400 the refusal is a 400 'Rate Limit' message with retry-after."""
    config = SimulatorConfig(team_size=2, rate_limit=1, rate_limit_status=400, rate_window_s=5)
    async with serve(config) as running:
        assert (await post(session, running, make_body(running.user_ids))).status == 200
        answer = await post(session, running, make_body(running.user_ids))
    assert answer.status == 400
    assert answer.json() == {"message": "Rate Limit exceeded, please try again later"}
    assert answer.headers["retry-after"] == "5"


async def test_rate_limit_is_per_key_and_skips_auth_failures(
    session: aiohttp.ClientSession,
) -> None:
    """Each API key has its own window; auth failures neither count nor carry rate headers."""
    config = SimulatorConfig(team_size=2, api_keys=("a", "b"), rate_limit=1, rate_window_s=5)
    async with serve(config) as running:
        body = make_body(running.user_ids)
        denied = await post(session, running, body, key="nope")
        assert denied.status == 400
        assert "x-ratelimit-limit" not in denied.headers
        assert (await post(session, running, body, key="a")).status == 200
        assert (await post(session, running, body, key="b")).status == 200
        assert (await post(session, running, body, key="a")).status == 429


@pytest.mark.parametrize("reset_format", ["epoch", "seconds", "http-date"])
async def test_reset_header_formats(session: aiohttp.ClientSession, reset_format: Any) -> None:
    """x-ratelimit-reset is epoch seconds, seconds to go, or an HTTP date, as configured."""
    config = SimulatorConfig(team_size=2, rate_limit=5, rate_window_s=30, reset_format=reset_format)
    async with serve(config) as running:
        before = time.time()
        reset = (await post(session, running, make_body(running.user_ids))).headers[
            "x-ratelimit-reset"
        ]
    if reset_format == "epoch":
        assert before + 29 <= float(reset) <= before + 31
        assert len(reset.split(".")[1]) == 3  # milliseconds
    elif reset_format == "seconds":
        assert reset == "30"
    else:
        when = email.utils.parsedate_to_datetime(reset).timestamp()
        assert reset.endswith(" GMT")
        assert before + 29 <= when <= before + 32


def test_fixed_window_limiter_arithmetic_with_a_fake_clock() -> None:
    """The limiter admits `limit` per window, refuses without consuming, and reports reset_in."""
    now = [100.0]
    limiter = FixedWindowLimiter(2, 10.0, clock=lambda: now[0])
    first = limiter.hit("k")
    assert (first.allowed, first.remaining, first.reset_in) == (True, 1, 10.0)
    now[0] = 103.5
    assert limiter.hit("k").remaining == 0
    refused = limiter.hit("k")
    assert (refused.allowed, refused.retry_after, refused.reset_in) == (False, 7, 6.5)
    assert limiter.hit("other").allowed
    now[0] = 110.0
    fresh = limiter.hit("k")
    assert (fresh.allowed, fresh.remaining, fresh.reset_in) == (True, 1, 10.0)


# -- faults --------------------------------------------------------------------------------------


async def _one_fault(session: aiohttp.ClientSession, kind: FaultKind, **extra: Any) -> Any:
    config = SimulatorConfig(team_size=6, fault_rate=1.0, fault_kinds=(kind,), **extra)
    async with serve(config) as running:
        body = make_body(running.user_ids, limit=4)
        try:
            answer: Any = await post(session, running, body)
        except aiohttp.ClientConnectionError as exc:
            answer = exc
        return answer, running.stats.snapshot()


async def test_fault_500_is_the_vendor_json_error(session: aiohttp.ClientSession) -> None:
    """A "500" fault is HTTP 500 with the vendor's 5001 JSON message."""
    answer, stats = await _one_fault(session, "500")
    assert answer.status == 500
    assert answer.json() == {"message": "5001: Internal server error, please try again later"}
    assert stats["faults"] == {"500": 1}


@pytest.mark.parametrize("kind", ["502", "503", "504"])
async def test_gateway_faults_are_html(session: aiohttp.ClientSession, kind: FaultKind) -> None:
    """502/503/504 faults answer an HTML page, not JSON, as a gateway would."""
    answer, stats = await _one_fault(session, kind)
    assert answer.status == int(kind)
    assert answer.headers["Content-Type"].startswith("text/html")
    assert b"<html>" in answer.raw
    assert "retry-after" not in answer.headers
    assert stats["responses"] == {kind: 1}


async def test_fault_503_with_retry_after(session: aiohttp.ClientSession) -> None:
    """The "503-retry-after" fault is a 503 carrying retry-after: 1."""
    answer, stats = await _one_fault(session, "503-retry-after")
    assert answer.status == 503
    assert answer.headers["retry-after"] == "1"
    assert stats["faults"] == {"503-retry-after": 1}


async def test_fault_reset_is_a_connection_error(session: aiohttp.ClientSession) -> None:
    """A "reset" fault drops the connection: the client gets a connection error, no status."""
    answer, stats = await _one_fault(session, "reset")
    assert isinstance(answer, aiohttp.ClientConnectionError)
    assert stats["responses"] == {"reset": 1}
    assert stats["kinds"] == {"reset": 1}


async def test_fault_truncated_is_half_the_real_body(session: aiohttp.ClientSession) -> None:
    """A "truncated" fault is a JSON 200 cut in half, with a matching content-length."""
    answer, stats = await _one_fault(session, "truncated")
    async with serve(SimulatorConfig(team_size=6)) as clean:
        full = (await post(session, clean, make_body(clean.user_ids, limit=4))).raw
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    assert int(answer.headers["Content-Length"]) == len(answer.raw) == len(full) // 2
    assert answer.raw == full[: len(full) // 2]
    with pytest.raises(json.JSONDecodeError):
        answer.json()
    assert stats["pages"][0]["successes"] == 0


async def test_fault_stall_delays_then_answers(session: aiohttp.ClientSession) -> None:
    """A "stall" fault holds the answer for stall_s, then sends the complete page."""
    started = time.monotonic()
    answer, stats = await _one_fault(session, "stall", stall_s=0.3)
    assert time.monotonic() - started >= 0.3
    assert answer.status == 200
    assert len(answer.json()["payload"]["data"]) == 4
    assert stats["faults"] == {"stall": 1}
    assert stats["pages"][0]["successes"] == 1


async def test_faults_reproduce_regardless_of_arrival_order(
    session: aiohttp.ClientSession,
) -> None:
    """The same seed gives each page the same fault sequence, whatever the request order."""
    config = SimulatorConfig(
        team_size=40, seed=9, fault_rate=0.5, fault_kinds=("500", "502", "503", "504")
    )
    pages, attempts = range(1, 11), range(3)

    async def sequences(order: list[tuple[int, int]]) -> dict[int, list[int]]:
        seen: dict[int, list[int]] = {page: [] for page in pages}
        async with serve(config) as running:
            body = make_body(running.user_ids, limit=4)
            for page, _ in order:
                seen[page].append((await post(session, running, {**body, "page": page})).status)
        return seen

    page_major = [(p, a) for p in pages for a in attempts]
    attempt_major_reversed = [(p, a) for a in attempts for p in reversed(pages)]
    first, second = await sequences(page_major), await sequences(attempt_major_reversed)
    assert first == second
    statuses = {s for seq in first.values() for s in seq}
    assert 200 in statuses
    assert statuses - {200}


async def test_fail_pages_always_answer_500(session: aiohttp.ClientSession) -> None:
    """Pages in fail_pages answer 500 on every attempt while other pages succeed."""
    async with serve(SimulatorConfig(team_size=9, fail_pages=frozenset({2}))) as running:
        body = make_body(running.user_ids, limit=3)
        for _ in range(4):
            assert (await post(session, running, {**body, "page": 2})).status == 500
        assert (await post(session, running, {**body, "page": 1})).status == 200
        assert (await post(session, running, {**body, "page": 3})).status == 200
        assert running.stats.requests_for(2) == 4
        assert running.stats.successes_for(2) == 0
        assert running.stats.successes_for(1) == 1
        assert running.stats.faults == {"500": 4}


async def test_latency_and_jitter_delay_answers(session: aiohttp.ClientSession) -> None:
    """latency_ms (plus up to latency_jitter_ms) passes before each answer."""
    config = SimulatorConfig(team_size=2, latency_ms=120, latency_jitter_ms=40)
    async with serve(config) as running:
        started = time.monotonic()
        assert (await post(session, running, make_body(running.user_ids))).status == 200
        elapsed = time.monotonic() - started
    assert 0.12 <= elapsed < 0.6


# -- stats ---------------------------------------------------------------------------------------


async def test_stats_count_requests_pages_and_in_flight(session: aiohttp.ClientSession) -> None:
    """Stats count requests, outcomes, kinds, max in flight, per-page successes and refetches."""
    async with serve(SimulatorConfig(team_size=10, latency_ms=100)) as running:
        body = make_body(running.user_ids, limit=2)
        answers = await asyncio.gather(
            *(post(session, running, {**body, "page": page}) for page in (1, 2, 3, 4, 1))
        )
        assert [a.status for a in answers] == [200] * 5
        await post(session, running, body, key="bad")
        await post(session, running, make_body(running.user_ids, limit="x"))
        stats = running.stats
        assert stats.requests == 7
        assert stats.max_in_flight == 5
        assert stats.in_flight == 0
        assert stats.responses == {"200": 5, "400": 2}
        assert stats.kinds == {"ok": 5, "auth": 1, "invalid": 1}
        assert stats.requests_for(1) == 3  # two good ones and the invalid one
        assert stats.successes_for(1) == 2
        assert stats.successes_for(2) == 1
        twice = stats.pages_fetched_twice()
        assert [page for _, page in twice] == [1]
        ok_events = [e for e in stats.events if e.kind == "ok"]
        assert sorted(e.page or 0 for e in ok_events) == [1, 1, 2, 3, 4]
        assert all(e.status == 200 and e.query == twice[0][0] for e in ok_events)
        assert all(e.t <= time.monotonic() for e in stats.events)

        async with session.get(running.base_url + "/_simulator/stats") as resp:
            remote = await resp.json()
        assert remote == json.loads(json.dumps(stats.snapshot()))
        assert remote["pages_fetched_twice"] == [[twice[0][0], 1]]
        async with session.get(running.base_url + "/_simulator/stats?events=1") as resp:
            assert len((await resp.json())["events"]) == 7
        async with session.post(running.base_url + "/_simulator/reset") as resp:
            assert resp.status == 200
        assert stats.requests == 0
        assert stats.pages_fetched_twice() == []
        assert stats.snapshot()["responses"] == {}


# -- team member list ----------------------------------------------------------------------------


async def test_team_member_list(session: aiohttp.ClientSession, sim: RunningSimulator) -> None:
    """GET team-member-list returns every member with id, names, email and role; auth applies."""
    answer = await members(session, sim)
    assert answer.status == 200
    document = answer.json()
    assert document["message"]
    assert document["payload"] == [
        {
            "id": m.user_id,
            "firstName": m.first_name,
            "lastName": m.last_name,
            "email": m.email,
            "role": "member",
        }
        for m in sim.team
    ]
    denied = await members(session, sim, key="wrong")
    assert denied.status == 400
    assert denied.json() == {"type": "auth", "message": "Invalid token"}


# -- lifecycle -----------------------------------------------------------------------------------


async def test_shutdown_is_prompt_while_a_request_stalls(session: aiohttp.ClientSession) -> None:
    """Leaving serve() drops a stalled request at once; its client sees a connection error."""

    async def stalled_request(running: RunningSimulator) -> BaseException | None:
        try:
            await post(session, running, make_body(running.user_ids))
        except aiohttp.ClientConnectionError as exc:
            return exc
        return None

    config = SimulatorConfig(team_size=3, fault_rate=1.0, fault_kinds=("stall",), stall_s=30)
    async with asyncio.TaskGroup() as group:
        async with serve(config) as running:
            task = group.create_task(stalled_request(running))
            await eventually(lambda: running.stats.faults["stall"] == 1)
            started = time.monotonic()
        assert time.monotonic() - started < 2.0
    assert isinstance(task.result(), aiohttp.ClientConnectionError)
    assert running.stats.responses == {"stall": 1}
    assert running.stats.events[0].status is None


async def test_client_giving_up_on_a_stall_is_counted(session: aiohttp.ClientSession) -> None:
    """A client timing out on a stalled page ends the handler; the outcome is "stall"."""
    config = SimulatorConfig(team_size=3, fault_rate=1.0, fault_kinds=("stall",), stall_s=30)
    async with serve(config) as running:
        with pytest.raises(asyncio.TimeoutError):
            async with asyncio.timeout(0.2):
                await post(session, running, make_body(running.user_ids))
        await eventually(lambda: running.stats.in_flight == 0)
        assert running.stats.responses == {"stall": 1}


async def test_cli_serves_and_writes_users(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    """The CLI prints its base URL, writes the team's user ids and exits 0 on SIGTERM."""
    users = tmp_path / "users.txt"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fetcher.simulator",
        "--port",
        "0",
        "--team-size",
        "7",
        "--seed",
        "4",
        "--api-key",
        "cli-key",
        "--write-users",
        str(users),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(10):
            base_url = (await process.stdout.readline()).decode().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base_url)
        assert users.read_text().split() == [m.user_id for m in build_team(4, 7)]
        async with session.get(base_url + MEMBERS_PATH, headers={"x-api-key": "cli-key"}) as resp:
            assert resp.status == 200
            assert len((await resp.json())["payload"]) == 7
    finally:
        process.terminate()
        async with asyncio.timeout(10):
            assert await process.wait() == 0


def test_the_simulator_and_the_client_agree_on_the_vocabulary_of_the_reference() -> None:
    """The stand-in keeps its own copy of the reference's lists: a mistake in either shows here."""
    from fetcher import spec  # noqa: PLC0415  (the client's side, kept out of the simulator)
    from fetcher.simulator import _vocab  # noqa: PLC0415

    assert _vocab.METRICS_BY_TYPE == spec.METRICS_BY_TYPE
    assert set(get_args(_vocab.ReportType)) == set(get_args(spec.ReportType))
    assert set(get_args(_vocab.CountBy)) == set(get_args(spec.CountBy))
    assert set(get_args(_vocab.SortOrder)) == set(get_args(spec.SortOrder))
    assert _vocab.MAX_PAGE_SIZE >= spec.MAX_PAGE_SIZE  # the client never asks for more


async def test_warm_computes_every_members_figures_before_serving_and_changes_none() -> None:
    """``warm``: the figures are computed at start (both types, both countBy), the same ones.

    Computed on first use they cost the server 40 ms of CPU per 1,000 users, so a
    query's first page came late against its latency; the rate-limit benchmarks,
    whose ideal has every answer in its latency, serve warm.
    """
    config = SimulatorConfig(team_size=30, seed=4)
    async with serve(config) as cold, serve(config.model_copy(update={"warm": True})) as warm:
        assert len(warm._simulator.engine._plans) == 30 * 2 * 2
        assert len(cold._simulator.engine._plans) == 0
        for report_type, order_by in (("prospect", "prospectAdded"), ("email", "emailSent")):
            body = make_body(cold.user_ids, type=report_type, orderBy=order_by)
            assert warm.expected_rows(body) == cold.expected_rows(body)
