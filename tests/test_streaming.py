"""Pages reach the sink as they arrive: before their query's last page, once per user, resumable."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest

from fetcher import Client, DuckDBSink, JsonlSink, MemorySink, Page, SinkError, export
from fetcher.run.checkpoint import Checkpointer
from fetcher.simulator import RunningSimulator, SimulatorConfig, serve
from fetcher.spec import QuerySpec
from tests.integration import KEY, read_jsonl, spec_for

#: 100 users in pages of 10, one page at a time (concurrency 1): ten pages, in order.
ONE_QUERY = SimulatorConfig(seed=4, team_size=100, latency_ms=5)


def pages_served(sim: RunningSimulator, spec: QuerySpec) -> set[int]:
    """The pages of ``spec`` the server has answered so far."""
    query = sim.query_key(spec.body(1))
    return {e.page for e in sim.stats.events if e.query == query and e.kind == "ok" and e.page}


async def export_watching(
    sim: RunningSimulator, sink: Any, spec: QuerySpec, look: Callable[[], int]
) -> tuple[int, set[int]]:
    """Export ``spec`` one request at a time; at the first page written, read the output."""
    seen: list[tuple[int, set[int]]] = []

    def on_page(page: Page) -> None:
        if not seen:
            seen.append((look(), pages_served(sim, spec)))

    summary = await export(
        spec, sink, api_key=KEY, base_url=sim.base_url, concurrency=1, on_page=on_page
    )
    assert summary.ok
    return seen[0]


async def test_jsonl_partial_file_holds_a_querys_rows_before_its_last_page(
    tmp_path: Path,
) -> None:
    """The first page's rows are in NAME.partial while most of its query is still unfetched."""
    out = tmp_path / "s.jsonl"
    partial = out.with_name(out.name + ".partial")
    async with serve(ONE_QUERY) as sim:
        spec = spec_for(sim)
        rows, served = await export_watching(
            sim, JsonlSink(out), spec, lambda: len(read_jsonl(partial))
        )
    assert rows == 10  # page 1 is on disk...
    assert 10 not in served  # ...before the query's last page was even answered
    assert len(served) <= 3  # page 1, and the next one or two in flight
    assert len(read_jsonl(out)) == 100


async def test_duckdb_table_holds_a_querys_rows_before_its_last_page(tmp_path: Path) -> None:
    """A page is upserted when it is back: the table has rows while the query is still paging."""
    path = tmp_path / "s.duckdb"
    sink = DuckDBSink(path)

    def count() -> int:
        # The sink's own connection: DuckDB lets one process open a file once.
        connection = sink._connection
        assert connection is not None
        row = connection.execute("SELECT count(*) FROM team_stats").fetchone()
        return int(row[0]) if row else 0

    async with serve(ONE_QUERY) as sim:
        spec = spec_for(sim)
        rows, served = await export_watching(sim, sink, spec, count)
    assert rows == 10
    assert 10 not in served
    with duckdb.connect(str(path), read_only=True) as connection:
        assert connection.execute("SELECT count(*) FROM team_stats").fetchone() == (100,)


async def test_client_pages_yields_page_one_as_soon_as_it_is_back() -> None:
    """`async for page in client.pages(spec)` sees page 1 while the rest is being fetched."""
    async with serve(ONE_QUERY) as sim:
        spec = spec_for(sim)
        async with Client(api_key=KEY, base_url=sim.base_url, concurrency=1) as client:
            numbers: list[int] = []
            async for page in client.pages(spec):
                if not numbers:
                    first_served = pages_served(sim, spec)
                numbers.append(page.number)
    assert numbers == list(range(1, 11))
    assert 10 not in first_served and len(first_served) <= 3


class FailingAfter:
    """A JSONL sink whose disk fills up after ``pages`` pages (the run stops there)."""

    def __init__(self, out: Path, pages: int) -> None:
        self.inner = JsonlSink(out)
        self.left = pages

    async def __aenter__(self) -> FailingAfter:
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.inner.__aexit__(*exc_info)

    async def write(self, page: Page) -> None:
        if self.left == 0:
            raise OSError(28, "No space left on device")
        self.left -= 1
        await self.inner.write(page)

    async def checkpoint(self) -> dict[str, Any]:
        return await self.inner.checkpoint()

    def resume_from(self, token: Any) -> None:
        self.inner.resume_from(token)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_resumed_run_on_moving_data_writes_each_user_once(
    tmp_path: Path, seed: int
) -> None:
    """The users written before the stop travel with the checkpoint: none is written twice.

    Counts move while the report is paged, so the pages fetched after the
    resume hold users the first run had already written; the checkpoint's
    set of written users keeps them out, and the repair pass finds the ones
    that slid out of sight.
    """
    config = SimulatorConfig(seed=seed, team_size=120, drift=2.0, latency_ms=2)
    out = tmp_path / "s.jsonl"
    state = tmp_path / "s.state.json"
    async with serve(config) as sim:
        spec = spec_for(sim)
        first = Checkpointer.open(state, [spec], output=str(out), interval_s=0)
        with pytest.raises(SinkError, match="No space left"):
            await export(
                spec,
                FailingAfter(out, pages=5),
                api_key=KEY,
                base_url=sim.base_url,
                concurrency=2,
                checkpoint=first,
            )
        again = Checkpointer.open(state, [spec], output=str(out), interval_s=0)
        assert again.resumed and again.resumed_pages == 5
        summary = await export(
            spec, JsonlSink(out), api_key=KEY, base_url=sim.base_url, checkpoint=again
        )
    assert summary.ok
    ids = [record["userId"] for record in read_jsonl(out)]
    assert sorted(ids) == sorted(sim.user_ids)  # every user, exactly once


async def test_memory_sink_gets_each_user_once_under_drift() -> None:
    """Drift repeats users across pages: the first answer is written, the repeat dropped."""
    async with serve(SimulatorConfig(seed=9, team_size=150, drift=2.0, latency_ms=2)) as sim:
        spec = spec_for(sim)
        sink = MemorySink()
        summary = await export(spec, sink, api_key=KEY, base_url=sim.base_url, concurrency=4)
    ids = [record["userId"] for record in sink.records]
    assert summary.ok and summary.duplicates_dropped > 0
    assert sum(page.dropped for page in sink.pages) == summary.duplicates_dropped
    assert sorted(ids) == sorted(sim.user_ids)
