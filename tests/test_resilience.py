"""Rate limits, retries and faults against the simulator on a real port."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from fetcher import Client, JsonlSink, MemorySink, Rate, RetryPolicy, export
from fetcher.simulator import SimulatorConfig, serve
from tests.integration import KEY, assert_same_rows, read_jsonl, spec_for

# Fast retries for tests; the policy's shape is what is under test, not its pauses.
QUICK = RetryPolicy(attempts=8, backoff_base_s=0.02, backoff_max_s=0.2)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_faults_and_rate_limit_still_give_the_exact_dataset(
    tmp_path: Path, seed: int
) -> None:
    """20% faults of every kind under a rate limit: every record once, no page fetched twice."""
    config = SimulatorConfig(
        seed=seed,
        team_size=480,
        fault_rate=0.2,
        stall_s=3.0,
        rate_limit=60,
        rate_window_s=0.5,
        latency_ms=5,
    )
    async with serve(config) as sim:
        spec = spec_for(sim, page_size=8)
        out = tmp_path / "out.jsonl"
        async with Client(api_key=KEY, base_url=sim.base_url, retry=QUICK, timeout=0.5) as client:
            summary = await export(spec, JsonlSink(out), client=client)
        expected = sim.expected_rows(spec.body(1))
        stats = sim.stats
        twice = stats.pages_fetched_twice()
        faults = dict(stats.faults)
    assert summary.ok, summary.failed_pages
    assert_same_rows(read_jsonl(out), expected)
    assert twice == []
    assert sum(faults.values()) >= 6  # faults really happened...
    assert summary.retries >= sum(faults.values())  # ...and each cost a retry
    assert summary.requests == summary.pages + summary.retries


async def test_configured_limit_equal_to_the_servers_gets_no_429() -> None:
    """With --rate-limit equal to the server's limit, the server never refuses."""
    config = SimulatorConfig(team_size=1200, rate_limit=40, rate_window_s=0.5, latency_ms=20)
    async with serve(config) as sim:
        spec = spec_for(sim, page_size=10)
        summary = await export(
            spec, MemorySink(), api_key=KEY, base_url=sim.base_url, rate_limit=Rate(40, 0.5)
        )
        refused = sim.stats.rate_limited
    assert summary.ok
    assert refused == 0


async def test_without_configured_limit_it_follows_the_server() -> None:
    """No client limit: after the first window, under 5% of requests are refused."""
    config = SimulatorConfig(team_size=1500, rate_limit=25, rate_window_s=0.5, latency_ms=20)
    async with serve(config) as sim:
        spec = spec_for(sim, page_size=10)
        summary = await export(spec, MemorySink(), api_key=KEY, base_url=sim.base_url, retry=QUICK)
        events = list(sim.stats.events)
    assert summary.ok
    first_window_end = events[0].t + 0.5
    later = [e for e in events if e.t >= first_window_end]
    refused = [e for e in later if e.kind == "rate_limited"]
    assert len(later) >= 100
    assert len(refused) / len(later) < 0.05


@pytest.mark.parametrize("status", [429, 400])
async def test_one_refusal_pauses_every_worker(status: Any) -> None:
    """After a 429 (or the "Rate Limit" 400) no request reaches the server before the reset.

    Another process with the same key has spent the whole window before the run
    starts, so the first request is refused for certain; every worker then waits
    for the window's end (learned from the refusal's reset, sooner than a
    rounded-up Retry-After), and nothing is refused again.
    """
    window = 2.0
    config = SimulatorConfig(
        team_size=1200,
        rate_limit=150,
        rate_window_s=window,
        latency_ms=20,
        rate_limit_status=status,
    )
    async with serve(config) as sim:
        spec = spec_for(sim, page_size=10)
        body = spec_for(sim, page_size=1, type="email").body(1)
        async with aiohttp.ClientSession() as session:

            async def one() -> None:
                async with session.post(
                    sim.base_url + "/v1/analytics/team/stats",
                    json=body,
                    headers={"x-api-key": KEY},
                ) as response:
                    await response.read()

            async with anyio.create_task_group() as tg:
                for _ in range(150):
                    tg.start_soon(one)
        stolen = [e for e in sim.stats.events if e.query == sim.query_key(body)]
        sink = MemorySink()
        summary = await export(
            spec, sink, api_key=KEY, base_url=sim.base_url, concurrency=8, retry=QUICK
        )
        ours = [e for e in sim.stats.events if e.query == sim.query_key(spec.body(1))]
        expected = sim.expected_rows(spec.body(1))
    assert summary.ok
    window_end = min(e.t for e in stolen) + window
    refusals = [e for e in ours if e.kind == "rate_limited"]
    assert refusals, "the spent window should have caused a refusal"
    # Page 1 goes alone and is refused; nothing else arrives before the window ends.
    assert [e for e in ours if e.t < window_end] == refusals == [refusals[0]]
    assert summary.rate_limit_refusals == 1
    assert_same_rows(sink.records, expected)


async def test_stalled_request_times_out_and_is_retried() -> None:
    """A response slower than the timeout is abandoned and retried, not waited for."""
    config = SimulatorConfig(team_size=30, fault_rate=1.0, fault_kinds=("stall",), stall_s=5.0)
    async with serve(config) as sim:
        spec = spec_for(sim, page_size=10)
        with anyio.fail_after(4):
            async with Client(
                api_key=KEY,
                base_url=sim.base_url,
                timeout=0.2,
                retry=RetryPolicy(attempts=2, backoff_base_s=0.01),
            ) as client:
                summary = await export(spec, MemorySink(), client=client)
    assert summary.status == "incomplete"
    assert summary.failed_queries == [spec.key]
    assert summary.failed_pages[0].error_type == "RequestTimeoutError"
    assert summary.failed_pages[0].attempts == 2


async def test_bad_key_stops_everything_with_no_retries() -> None:
    """A refused key is never retried, even mid-run with many workers."""
    async with serve(SimulatorConfig(team_size=100, api_keys=("other",))) as sim:
        spec = spec_for(sim)
        with pytest.raises(Exception, match="refused the key"):
            await export(spec, MemorySink(), api_key=KEY, base_url=sim.base_url, retry=QUICK)
        requests = sim.stats.requests
    assert requests == 1
