"""--shared-limiter: one window budget for every process on one key, in the real Redis."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from fetcher import Client, MemorySink, export
from fetcher.errors import ConfigError
from fetcher.shared_limit import SharedWindow, shared_key
from fetcher.simulator import SimulatorConfig, serve
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
