"""Helpers for the sinks' tests: hand-made pages; a multi-slice export and the table it makes.

The export helpers serve the three tabular sinks' tests alike: run the six
slices into a sink (:func:`export_slices`), then check the run
(:func:`assert_complete`, :func:`assert_page_3_lost`, :func:`assert_resumed`)
and what the sink holds (:func:`assert_same_table`).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import fetcher
from fetcher import export
from fetcher.models import Page
from fetcher.run.checkpoint import Checkpointer, RunState
from fetcher.simulator import RunningSimulator, SimulatorConfig, serve
from fetcher.sinks import ResumableSink, Sink
from fetcher.sinks._schema import COLUMNS, IDENTITY_COLUMN_NAMES, KEY_COLUMNS, METRIC_COLUMN_NAMES
from fetcher.spec import QuerySpec, ReportType
from tests.integration import KEY

#: 45 users in pages of 10: five pages per query, the last one short.
TEAM_SIZE = 45
PAGE_SIZE = 10
PAGES_PER_QUERY = 5
#: The simulator for a clean run; FAILING answers page 3 of every query with 500.
CLEAN = SimulatorConfig(seed=21, team_size=TEAM_SIZE)
FAILING = SimulatorConfig(seed=21, team_size=TEAM_SIZE, fail_pages=frozenset({3}))
#: Fail fast: one retry, tiny backoff.
FAST_RETRY = fetcher.RetryPolicy(attempts=2, backoff_base_s=0.001, backoff_max_s=0.001)
#: Rows a sink that commits per page holds after a FAILING run: all but page 3's.
ROWS_WITHOUT_PAGE_3 = 6 * (TEAM_SIZE - PAGE_SIZE)

#: When the hand-made pages arrived; the sinks keep milliseconds only.
FETCHED = dt.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)

_IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
#: Three daily windows; the last in another zone, so offsets are exercised.
WINDOWS = [
    (dt.datetime(2024, 3, 1, tzinfo=dt.UTC), dt.datetime(2024, 3, 1, 23, 59, 59, 999000, dt.UTC)),
    (dt.datetime(2024, 3, 2, tzinfo=dt.UTC), dt.datetime(2024, 3, 2, 23, 59, 59, 999000, dt.UTC)),
    (dt.datetime(2024, 3, 3, tzinfo=_IST), dt.datetime(2024, 3, 3, 23, 59, 59, 999000, _IST)),
]

Key = tuple[Any, ...]


def day_query(report: ReportType = "email") -> QuerySpec:
    """Users a and b over 2024-01-01 (UTC): the query of the hand-made pages."""
    return QuerySpec(
        user_ids=("a", "b"),
        start=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        end=dt.datetime(2024, 1, 1, 23, 59, 59, 999000, tzinfo=dt.UTC),
        type=report,
    )


async def checkpoint_then_fail(sink: ResumableSink, kept: Page, lost: Page) -> dict[str, Any]:
    """Write ``kept``, checkpoint, write ``lost``, then fail the run; return the checkpoint."""
    with pytest.raises(RuntimeError):
        async with sink:
            await sink.write(kept)
            token = await sink.checkpoint()
            await sink.write(lost)
            raise RuntimeError("killed")
    return token


def slice_specs(sim: RunningSimulator) -> list[QuerySpec]:
    """3 daily windows x 2 report types over the whole team: 6 queries, 30 pages."""
    return [
        QuerySpec(
            user_ids=tuple(sim.user_ids),
            start=start,
            end=end,
            type=report,
            page_size=PAGE_SIZE,
        )
        for start, end in WINDOWS
        for report in ("prospect", "email")
    ]


def expected_table(sim: RunningSimulator, specs: Iterable[QuerySpec]) -> dict[Key, dict[str, Any]]:
    """Per natural key, the row every tabular sink must hold (``fetched_at`` aside)."""
    table: dict[Key, dict[str, Any]] = {}
    for spec in specs:
        for record in sim.expected_rows(spec.body(1)):
            row: dict[str, Any] = dict.fromkeys(COLUMNS)
            row.update(
                window_start=spec.start, window_end=spec.end, type=spec.type, count_by=spec.count_by
            )
            for api_name, column in {**IDENTITY_COLUMN_NAMES, **METRIC_COLUMN_NAMES}.items():
                if api_name in record:
                    row[column] = record[api_name]
            del row["fetched_at"]
            table[key_of(row)] = row
    return table


def key_of(row: Mapping[str, Any]) -> Key:
    return tuple(row[c] for c in KEY_COLUMNS)


def assert_same_table(got: list[dict[str, Any]], expected: dict[Key, dict[str, Any]]) -> None:
    """Every expected row once, no other row, every value equal; fetched_at set and aware."""
    if got:
        assert list(got[0]) == list(COLUMNS)
    counts = Counter(key_of(row) for row in got)
    duplicated = [k for k, n in counts.items() if n > 1]
    assert not duplicated, f"{len(duplicated)} duplicated keys, e.g. {duplicated[:3]}"
    missing = set(expected) - set(counts)
    unexpected = set(counts) - set(expected)
    assert not missing, f"{len(missing)} rows missing, e.g. {sorted(missing, key=str)[:3]}"
    assert not unexpected, f"{len(unexpected)} rows unexpected, e.g. {list(unexpected)[:3]}"
    for row in got:
        fetched = row["fetched_at"]
        assert isinstance(fetched, dt.datetime) and fetched.utcoffset() is not None
        values = {c: v for c, v in row.items() if c != "fetched_at"}
        assert values == expected[key_of(row)], (values, expected[key_of(row)])


async def run_export(
    sim: RunningSimulator,
    specs: list[QuerySpec],
    sink: Sink,
    *,
    state: Path | None = None,
    output: str = "",
) -> fetcher.RunSummary:
    """Export ``specs`` into ``sink``; with ``state``, checkpointed (and resumed if unfinished)."""
    checkpoint = Checkpointer.open(state, specs, output=output) if state is not None else None
    return await export(
        specs,
        sink,
        api_key=KEY,
        base_url=sim.base_url,
        retry=FAST_RETRY,
        checkpoint=checkpoint,
    )


def done_pages(state: Path) -> int:
    """Pages the state file records as durably written."""
    loaded = RunState.load(state)
    assert loaded is not None
    return sum(len(pages) for pages in loaded.done_pages().values())


@dataclass(frozen=True)
class SliceExport:
    """What one export of the six slices did."""

    summary: fetcher.RunSummary
    #: the table the sink must hold once every page is written
    expected: dict[Key, dict[str, Any]]
    #: the requests the simulator answered
    requests: int


async def export_slices(
    config: SimulatorConfig, sink: Sink, *, state: Path | None = None, output: str = ""
) -> SliceExport:
    """Export the six slices from a fresh simulator into ``sink`` (see :func:`run_export`)."""
    async with serve(config) as sim:
        specs = slice_specs(sim)
        summary = await run_export(sim, specs, sink, state=state, output=output)
        requests = sim.stats.requests
        return SliceExport(summary, expected_table(sim, specs), requests)


def assert_complete(run: SliceExport) -> None:
    """A clean run that fetched every page: 30 pages, 270 rows to hold."""
    assert run.summary.ok and run.summary.pages == 6 * PAGES_PER_QUERY
    assert len(run.expected) == 6 * TEAM_SIZE


def assert_page_3_lost(run: SliceExport, state: Path | None = None) -> None:
    """A FAILING run: incomplete; checkpointed (``state``), every other page recorded as done."""
    assert run.summary.status == "incomplete"
    if state is not None:
        assert done_pages(state) == 6 * (PAGES_PER_QUERY - 1)


def assert_resumed(run: SliceExport) -> None:
    """A resumed run after a FAILING one: ok, fetching page 3 of each query and nothing else."""
    assert run.summary.ok and run.summary.resumed_pages == 6 * (PAGES_PER_QUERY - 1)
    assert run.requests == 6
