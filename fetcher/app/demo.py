"""``fetcher demo``: a realistic export on a fresh install, with nothing to set up.

It starts the built-in simulator in-process on a free local port, with what
makes the real API hard: a team of a few hundred, 40 ms per request, a rate
limit of 60 requests a second (with ``x-ratelimit-*`` headers and 429s) and
5 % injected faults (5xx, HTML gateway pages, dropped connections, bodies cut
short, slow answers). Then it exports the last 14 days, one query per day,
both report types, 25 rows a page (28 queries, some 340 pages), into DuckDB
*and* JSONL at once (:class:`~fetcher.sinks.tee.TeeSink`) under
``./fetcher-demo/``, with the live progress display when standard error is a
terminal. It ends with the top users of the window, read back from the
DuckDB file with SQL, to show the output is ready to query.

The whole run is paced by the rate limit: about six seconds.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
from rich.console import Console
from rich.table import Table

from fetcher.dates import resolve_window, split_window
from fetcher.run.client import Client
from fetcher.run.pool import RunSummary, export
from fetcher.simulator import SimulatorConfig, serve
from fetcher.sinks import DuckDBSink, JsonlSink
from fetcher.sinks.tee import TeeSink
from fetcher.spec import QuerySpec

if TYPE_CHECKING:
    from fetcher.run.pool import Watcher

__all__ = ["run_demo", "top_users"]

DEMO_KEY: Final = "demo-key"
#: The simulated API's limit: requests per second, per key.
RATE_LIMIT: Final = 60
FAULT_RATE: Final = 0.05
PAGE_SIZE: Final = 25
TABLE: Final = "team_stats"

#: Per user over the window: the headline count of each report type.
TOP_USERS_SQL: Final = f"""
SELECT
    user_id,
    concat_ws(' ', first_name, last_name) AS name,
    sum(prospect_added) FILTER (WHERE type = 'prospect') AS prospects_added,
    sum(replied) FILTER (WHERE type = 'prospect') AS replies,
    sum(email_sent) FILTER (WHERE type = 'email') AS emails_sent
FROM {TABLE}
WHERE window_start >= ? AND window_end <= ?
GROUP BY user_id, name
ORDER BY prospects_added DESC NULLS LAST, user_id
LIMIT ?
"""  # noqa: S608  (the table name is a constant)


def top_users(
    path: Path, start: dt.datetime, end: dt.datetime, *, limit: int = 10
) -> list[tuple[Any, ...]]:
    """The users with the most prospects added in ``[start, end]``, from a DuckDB export.

    Returns:
        Rows of (user id, name, prospects added, replies, emails sent).
    """
    import duckdb  # noqa: PLC0415  (a heavy import, needed only here)

    with duckdb.connect(str(path), read_only=True) as connection:
        return connection.execute(TOP_USERS_SQL, [start, end, limit]).fetchall()


def _table(rows: list[tuple[Any, ...]], days: int) -> Table:
    table = Table(title=f"Top {len(rows)} users, last {days} days (from DuckDB)")
    table.add_column("#", justify="right")
    table.add_column("user")
    table.add_column("name")
    table.add_column("prospects added", justify="right")
    table.add_column("replies", justify="right")
    table.add_column("emails sent", justify="right")
    for rank, (user, name, added, replies, sent) in enumerate(rows, start=1):
        table.add_row(str(rank), user, name, *(f"{n or 0:,}" for n in (added, replies, sent)))
    return table


def _summary_line(summary: RunSummary) -> str:
    return (
        f"fetcher demo: {summary.status}: {summary.pages} pages, {summary.records:,} records, "
        f"{summary.requests} requests ({summary.retries} retries, "
        f"{summary.rate_limit_waits} waits for the rate limit) in {summary.duration_s:.1f} s"
    )


async def run_demo(
    *,
    out_dir: Path,
    team_size: int = 300,
    latency_ms: float = 40.0,
    days: int = 14,
    watch: Watcher | None = None,
    console: Console | None = None,
) -> int:
    """Run the demo export and print the per-user table.

    Args:
        out_dir: where the DuckDB and JSONL files go.
        team_size: simulated team members.
        latency_ms: simulated time per request.
        days: the window: this many whole days up to yesterday, one query each.
        watch: a progress display (see :func:`fetcher.run.pool.export`).
        console: where to print (default: standard output).

    Returns:
        0 when every page was fetched and written, 4 when some are missing.

    Raises:
        FetcherError: an error stopped the export.
    """
    console = console or Console(file=sys.stdout, highlight=False)
    config = SimulatorConfig(
        seed=2024,
        team_size=team_size,
        api_keys=(DEMO_KEY,),
        latency_ms=latency_ms,
        latency_jitter_ms=latency_ms / 2,
        rate_limit=RATE_LIMIT,
        rate_window_s=1.0,
        fault_rate=FAULT_RATE,
        stall_s=1.0,  # a slow answer, not a hung one: the demo stays short
    )
    start, end = resolve_window(f"last {days} days", zone=dt.UTC, now=dt.datetime.now(dt.UTC))
    duckdb_path, jsonl_path = out_dir / "team-stats.duckdb", out_dir / "team-stats.jsonl"
    async with serve(config) as sim:
        users = tuple(sim.user_ids)
        specs = [
            QuerySpec(user_ids=users, start=first, end=last, type=kind, page_size=PAGE_SIZE)
            for first, last in split_window(start, end, "day", dt.UTC)
            for kind in ("prospect", "email")
        ]
        console.print(
            f"fetcher demo: a simulated team of {team_size} at {sim.base_url}: "
            f"{latency_ms:g} ms per request, {RATE_LIMIT} requests/s, "
            f"{FAULT_RATE:.0%} faults",
            soft_wrap=True,
        )
        console.print(
            f"fetcher demo: exporting {start.date()} .. {end.date()}, one query per day and "
            f"report type ({len(specs)} queries), into DuckDB and JSONL",
            soft_wrap=True,
        )
        sink = TeeSink(DuckDBSink(duckdb_path, table=TABLE), JsonlSink(jsonl_path))
        async with Client(api_key=DEMO_KEY, base_url=sim.base_url, concurrency=8) as client:
            summary = await export(specs, sink, client=client, watch=watch)
    console.print(_summary_line(summary), soft_wrap=True)
    if not summary.ok:
        console.print(
            f"fetcher demo: {len(summary.failed_pages)} page(s) missing; run it again",
            soft_wrap=True,
        )
        return 4
    console.print(f"fetcher demo: wrote {duckdb_path.resolve()} (table {TABLE})", soft_wrap=True)
    console.print(f"fetcher demo: wrote {jsonl_path.resolve()}", soft_wrap=True)
    rows = await anyio.to_thread.run_sync(lambda: top_users(duckdb_path, start, end))
    console.print(_table(rows, days))
    return 0
