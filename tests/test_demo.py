"""`fetcher demo`: one command on a fresh install, ending with per-user totals from DuckDB."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import duckdb

from fetcher.app.cli import ExitCode
from fetcher.app.demo import top_users
from fetcher.dates import resolve_window
from tests.integration import read_jsonl
from tests.test_cli import run_cli
from tests.test_progress import PAGES


async def test_demo_exports_to_duckdb_and_jsonl_and_prints_the_top_users(
    tmp_path: Path,
) -> None:
    """The default demo writes both outputs under ./fetcher-demo/ and prints the table."""
    started = time.monotonic()
    result = await run_cli(["demo"], key=None, cwd=tmp_path)
    duration = time.monotonic() - started
    print(f"fetcher demo took {duration:.1f} s")  # for the record, not a pass/fail criterion
    assert result.returncode == ExitCode.OK, result.stderr

    out = tmp_path / "fetcher-demo"
    database, jsonl = out / "team-stats.duckdb", out / "team-stats.jsonl"
    assert len(read_jsonl(jsonl)) == 300 * 14 * 2  # users x days x report types
    with duckdb.connect(str(database), read_only=True) as connection:
        row = connection.execute("SELECT count(*) FROM team_stats").fetchone()
    assert row == (300 * 14 * 2,)

    stdout = result.stdout
    assert "Top 10 users, last 14 days (from DuckDB)" in stdout
    for header in ("prospects added", "replies", "emails sent"):
        assert header in stdout
    start, end = resolve_window("last 14 days", zone=dt.UTC, now=dt.datetime.now(dt.UTC))
    top = top_users(database, start, end)
    assert len(top) == 10
    for user_id, name, added, *_ in top:
        assert user_id in stdout and name in stdout and f"{added:,}" in stdout
    assert str(database.resolve()) in stdout and str(jsonl.resolve()) in stdout
    # Rate limit and faults were real: the run waited and retried, and still completed.
    assert "ok: 336 pages, 8,400 records" in stdout
    # Not a terminal: no live display.
    assert not PAGES.search(result.stderr)


async def test_demo_options_shrink_the_run(tmp_path: Path) -> None:
    """--team-size, --days and --out-dir size and place the demo."""
    result = await run_cli(
        ["demo", "--team-size", "30", "--days", "2", "--out-dir", "elsewhere", "--quiet"],
        key=None,
        cwd=tmp_path,
    )
    assert result.returncode == ExitCode.OK, result.stderr
    assert len(read_jsonl(tmp_path / "elsewhere" / "team-stats.jsonl")) == 30 * 2 * 2
    assert "Top 10 users, last 2 days" in result.stdout
