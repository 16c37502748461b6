"""The library against the simulator on a real port: every record exactly once."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import anyio
import pytest

import fetcher
from fetcher import Client, JsonlSink, MemorySink, QuerySpec, export
from fetcher.errors import ConnectError
from fetcher.simulator import SimulatorConfig, serve
from tests.integration import JAN_START, KEY, assert_same_rows, read_jsonl, spec_for

ENVELOPES = ["data", "items", "array", "nested", "named"]


@pytest.mark.parametrize("envelope", ENVELOPES)
@pytest.mark.parametrize("string_counts", [False, True])
async def test_export_equals_the_full_dataset_for_every_envelope(
    tmp_path: Path, envelope: Any, string_counts: bool
) -> None:
    """Each envelope variant, with numbers or numeric strings, exports every row once."""
    config = SimulatorConfig(seed=3, team_size=137, envelope=envelope, string_counts=string_counts)
    async with serve(config) as sim:
        spec = spec_for(sim, page_size=10)
        out = tmp_path / "out.jsonl"
        summary = await export(spec, JsonlSink(out), api_key=KEY, base_url=sim.base_url)
        expected = sim.expected_rows(spec.body(1))
        assert sim.stats.pages_fetched_twice() == []
    assert summary.ok
    assert summary.records == 137
    assert summary.pages == 14
    assert_same_rows(read_jsonl(out), expected)
    assert not (tmp_path / "out.jsonl.partial").exists()


@pytest.mark.parametrize(
    ("team_size", "page_size", "pages"),
    [
        (7, 50, 1),  # one page
        (100, 10, 10),  # the page size divides the total exactly
        (101, 10, 11),  # one short last page
        (2000, 5, 400),  # hundreds of pages
        (1, 1, 1),  # the smallest possible
    ],
)
@pytest.mark.parametrize("envelope", ["data", "array"])
async def test_page_counts(team_size: int, page_size: int, pages: int, envelope: Any) -> None:
    """With and without meta, every page arrives once, whatever the division."""
    config = SimulatorConfig(seed=11, team_size=team_size, envelope=envelope)
    async with serve(config) as sim:
        spec = spec_for(sim, page_size=page_size)
        sink = MemorySink()
        summary = await export(spec, sink, api_key=KEY, base_url=sim.base_url, concurrency=16)
        expected = sim.expected_rows(spec.body(1))
        twice = sim.stats.pages_fetched_twice()
        successes = {p: sim.stats.successes_for(p) for p in range(1, pages + 1)}
    assert summary.ok and sink.completed
    assert sorted(p.number for p in sink.pages) == list(range(1, pages + 1))
    assert_same_rows(sink.records, expected)
    assert twice == []
    assert all(n == 1 for n in successes.values())


@pytest.mark.parametrize("envelope", ["data", "array"])
async def test_empty_result(envelope: Any, tmp_path: Path) -> None:
    """A query matching no users completes with zero records and an empty file."""
    async with serve(SimulatorConfig(team_size=5, envelope=envelope)) as sim:
        spec = spec_for(sim, user_ids=("nobody00001", "nobody00002"))
        out = tmp_path / "empty.jsonl"
        summary = await export(spec, JsonlSink(out), api_key=KEY, base_url=sim.base_url)
    assert summary.ok
    assert (summary.pages, summary.records, summary.requests) == (1, 0, 1)
    assert out.read_bytes() == b""


async def test_pages_are_fetched_concurrently() -> None:
    """With latency, pages 2..N are in flight together, bounded by the concurrency."""
    config = SimulatorConfig(team_size=400, latency_ms=40)
    async with serve(config) as sim:
        spec = spec_for(sim, page_size=10)
        summary = await export(
            spec, MemorySink(), api_key=KEY, base_url=sim.base_url, concurrency=8
        )
        most = sim.stats.max_in_flight
    assert summary.ok
    assert 4 <= most <= 8


async def test_a_configured_rate_sends_a_window_of_it_at_once() -> None:
    """--rate-limit 40/1s without --concurrency: 40 in flight, not 16; still 40 a second."""
    config = SimulatorConfig(team_size=1000, latency_ms=150, rate_limit=40, rate_window_s=1.0)
    async with serve(config) as sim:
        spec = spec_for(sim, page_size=10)
        summary = await export(
            spec, MemorySink(), api_key=KEY, base_url=sim.base_url, rate_limit="40/1s"
        )
        most = sim.stats.max_in_flight
        refused = sim.stats.rate_limited
    assert summary.ok and summary.records == 1000
    assert 16 < most <= 40
    assert refused == 0


@pytest.mark.parametrize(("concurrency", "most_allowed"), [(None, 40), (16, 16)])
async def test_a_fast_server_window_raises_the_default_concurrency_only(
    concurrency: int | None, most_allowed: int
) -> None:
    """Headers advertising 40 per 0.5 s: up to the window's 40 in flight by default, 16 when asked.

    Four full windows: two window lengths are learnt by the third, which then
    goes out with more than 16 in flight.
    """
    config = SimulatorConfig(team_size=1600, latency_ms=150, rate_limit=40, rate_window_s=0.5)
    async with serve(config) as sim:
        spec = spec_for(sim, page_size=10)
        summary = await export(
            spec, MemorySink(), api_key=KEY, base_url=sim.base_url, concurrency=concurrency
        )
        most = sim.stats.max_in_flight
        refused = sim.stats.rate_limited
    assert summary.ok and summary.records == 1600
    assert refused == 0
    assert most <= most_allowed
    if concurrency is None:
        assert most > 16


async def test_async_for_over_client_pages() -> None:
    """`async for page in client.pages(spec)` yields every page once, tagged."""
    async with serve(SimulatorConfig(seed=5, team_size=230)) as sim:
        spec = spec_for(sim, type="email", order_by="replied", sort_order="asc", page_size=25)
        async with Client(api_key=KEY, base_url=sim.base_url) as client:
            pages = [page async for page in client.pages(spec)]
        expected = sim.expected_rows(spec.body(1))
    assert sorted(p.number for p in pages) == list(range(1, 11))
    assert all(p.query == spec for p in pages)
    assert_same_rows([r for p in pages for r in p.records], expected)


async def test_several_queries_share_one_run() -> None:
    """Many queries in one call: each query's rows arrive once, tagged with their query."""
    async with serve(SimulatorConfig(seed=8, team_size=90)) as sim:
        specs = [spec_for(sim, type=t, page_size=20) for t in ("prospect", "email")]
        sink = MemorySink()
        summary = await export(specs, sink, api_key=KEY, base_url=sim.base_url)
        expected = {s.key: sim.expected_rows(s.body(1)) for s in specs}
    assert summary.ok and summary.queries == 2
    for spec in specs:
        assert_same_rows(
            [r for p in sink.pages if p.query == spec for r in p.records], expected[spec.key]
        )


async def test_breaking_out_of_the_loop_stops_fetching() -> None:
    """Leaving `async for` early closes the stream; the client exits promptly."""
    async with serve(SimulatorConfig(team_size=100, latency_ms=20)) as sim:
        # 30 queries of 10 pages each; a query is delivered once all its pages are in.
        specs = [
            spec_for(
                sim,
                page_size=10,
                start=JAN_START.replace(day=d),
                end=JAN_START.replace(day=d, hour=23),
            )
            for d in range(1, 31)
        ]
        with anyio.fail_after(10):
            async with Client(api_key=KEY, base_url=sim.base_url, concurrency=4) as client:
                stream = client.pages(specs)
                async for _ in stream:
                    break
                await stream.aclose()
        requests = sim.stats.requests
    assert requests < 100  # not all 300 pages


async def test_wrong_key_fails_at_once() -> None:
    """A refused key raises AuthError after a single request; the key is not in the message."""
    async with serve(SimulatorConfig(team_size=300)) as sim:
        spec = spec_for(sim)
        with pytest.raises(fetcher.AuthError) as info:
            await export(spec, MemorySink(), api_key="wrong-key-123", base_url=sim.base_url)
        requests = sim.stats.requests
    assert requests == 1
    assert "wrong-key-123" not in str(info.value)
    assert info.value.summary is not None and info.value.summary.status == "failed"


async def test_wrong_port_stops_the_run_quickly() -> None:
    """Nothing listening: a ConnectError stops the run instead of retrying every page."""
    spec = QuerySpec(
        user_ids=("a",),
        start=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        end=dt.datetime(2024, 1, 2, tzinfo=dt.UTC),
        type="prospect",
    )
    with anyio.fail_after(30), pytest.raises(ConnectError, match="cannot connect"):
        await export(
            spec,
            MemorySink(),
            api_key=KEY,
            base_url="http://127.0.0.1:9",
            retry=fetcher.RetryPolicy(attempts=2, backoff_base_s=0.01),
        )


async def test_failed_page_keeps_the_rest_and_reports_it(tmp_path: Path) -> None:
    """A page that always fails is listed; every other page is written; nothing looks complete."""
    config = SimulatorConfig(team_size=95, fail_pages=frozenset({4}))
    async with serve(config) as sim:
        spec = spec_for(sim, page_size=10)
        out = tmp_path / "out.jsonl"
        summary = await export(
            spec,
            JsonlSink(out),
            api_key=KEY,
            base_url=sim.base_url,
            retry=fetcher.RetryPolicy(attempts=3, backoff_base_s=0.01),
        )
        expected = sim.expected_rows(spec.body(1))
        requests_for_4 = sim.stats.requests_for(4)
    assert summary.status == "incomplete"
    assert [(f.page, f.status, f.attempts) for f in summary.failed_pages] == [(4, 500, 3)]
    assert requests_for_4 == 3
    assert summary.pages == 9
    assert not out.exists()  # no file that looks complete
    written = read_jsonl(tmp_path / "out.jsonl.partial")
    assert_same_rows(written, expected[:30] + expected[40:])
