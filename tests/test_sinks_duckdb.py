"""The DuckDB sink: a keyed table, one transaction per page, idempotent re-runs."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import duckdb
import pytest

from fetcher.errors import ConfigError, SinkError
from fetcher.models import Page
from fetcher.sinks import ResumableSink
from fetcher.sinks import duckdb as duckdb_sink
from fetcher.sinks._schema import COLUMNS
from fetcher.sinks.duckdb import ROW_GROUP_SIZE, DuckDBSink
from tests import tabular

SPEC = tabular.day_query("prospect")


def page(number: int, *records: dict[str, Any]) -> Page:
    return Page(SPEC, number, list(records))


def read_table(path: Path, table: str = "team_stats") -> list[dict[str, Any]]:
    """Every row, read with duckdb itself."""
    with duckdb.connect(str(path), read_only=True) as connection:
        cursor = connection.execute(f'SELECT * FROM "{table}"')
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]


def test_is_a_resumable_sink_whose_repr_names_file_and_table(tmp_path: Path) -> None:
    """The sink is a ResumableSink; repr shows path and table."""
    sink = DuckDBSink(tmp_path / "x.duckdb", table="stats_2024")
    assert isinstance(sink, ResumableSink)
    assert repr(sink) == f"DuckDBSink({str(tmp_path / 'x.duckdb')!r}, table='stats_2024')"


@pytest.mark.parametrize("name", ["team stats", "1st", "x;drop table y", "", "a" * 64, 'q"'])
def test_table_name_must_be_an_identifier(tmp_path: Path, name: str) -> None:
    """A table name that is not a plain identifier is a ConfigError naming --table."""
    with pytest.raises(ConfigError) as info:
        DuckDBSink(tmp_path / "x.duckdb", table=name)
    assert info.value.field == "--table"


async def test_table_is_created_with_the_schema_and_key(tmp_path: Path) -> None:
    """Entering creates the table: schema columns, DuckDB types, primary key on the natural key."""
    path = tmp_path / "new" / "stats.duckdb"
    async with DuckDBSink(path):
        pass
    with duckdb.connect(str(path), read_only=True) as connection:
        types = dict(
            connection.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'team_stats' ORDER BY ordinal_position"
            ).fetchall()
        )
        (key,) = connection.execute(
            "SELECT constraint_column_names FROM duckdb_constraints() "
            "WHERE table_name = 'team_stats' AND constraint_type = 'PRIMARY KEY'"
        ).fetchone() or (None,)
    assert list(types) == list(COLUMNS)
    assert types["window_start"] == types["fetched_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["meeting_booked"] == "BIGINT"
    assert types["extra"] == "JSON"
    assert key == ["window_start", "window_end", "type", "count_by", "user_id"]


async def test_existing_table_with_other_columns_fails_on_enter(tmp_path: Path) -> None:
    """A table of the same name but another shape is refused before anything is fetched."""
    path = tmp_path / "x.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.execute("CREATE TABLE team_stats (id INTEGER, note VARCHAR)")
    with pytest.raises(SinkError, match=r"other columns.*choose another --table"):
        async with DuckDBSink(path):
            pass


async def test_existing_table_without_the_key_fails_on_enter(tmp_path: Path) -> None:
    """The right columns but no primary key: the upsert cannot work, so entering fails."""
    path = tmp_path / "x.duckdb"
    async with DuckDBSink(path, table="keyed"):
        pass
    with duckdb.connect(str(path)) as connection:
        connection.execute("CREATE TABLE team_stats AS SELECT * FROM keyed LIMIT 0")
    with pytest.raises(SinkError, match="cannot use table 'team_stats'"):
        async with DuckDBSink(path):
            pass


async def test_not_a_database_fails_on_enter(tmp_path: Path) -> None:
    """A file that is not a DuckDB database fails on entry with a SinkError."""
    path = tmp_path / "notes.db"
    path.write_text("not a database\n" * 100)
    with pytest.raises(SinkError, match="cannot open the DuckDB database"):
        async with DuckDBSink(path):
            pass


async def test_a_page_is_one_transaction(tmp_path: Path) -> None:
    """A page DuckDB refuses leaves none of its rows; earlier pages stay committed."""
    path = tmp_path / "x.duckdb"
    async with DuckDBSink(path) as sink:
        await sink.write(page(1, {"userId": "a", "prospectAdded": 1}))
        too_big = page(2, {"userId": "b", "prospectAdded": 2}, {"userId": "c", "opened": 2**70})
        with pytest.raises(SinkError, match="page 2 of query") as info:
            await sink.write(too_big)
        await sink.write(page(3, {"userId": "d", "prospectAdded": 4}))
    assert "team_stats" in str(info.value)
    assert sorted(r["user_id"] for r in read_table(path)) == ["a", "d"]


async def test_upsert_replaces_rows_and_a_repeated_user_in_a_page_is_written_once(
    tmp_path: Path,
) -> None:
    """Writing a key again replaces its row; a page that lists a user twice keeps the last."""
    path = tmp_path / "x.duckdb"
    async with DuckDBSink(path) as sink:
        await sink.write(page(1, {"userId": "a", "prospectAdded": 1}))
        await sink.write(
            page(2, {"userId": "a", "prospectAdded": 2}, {"userId": "a", "prospectAdded": 3})
        )
    (row,) = read_table(path)
    assert row["prospect_added"] == 3


async def test_blocking_calls_run_in_one_thread_of_the_sinks_own(tmp_path: Path) -> None:
    """DuckDB is called off the event loop's thread, and always from the same thread."""
    threads: list[int] = []
    sink = DuckDBSink(tmp_path / "x.duckdb")
    upsert = sink._upsert

    def spy(*args: Any) -> None:
        threads.append(threading.get_ident())
        upsert(*args)

    sink._upsert = spy  # type: ignore[method-assign,assignment]
    async with sink, anyio.create_task_group() as tg:
        # Other work keeps anyio's worker threads busy in turn, as a run's
        # state-file writes do: the sink's calls must still share one thread.
        for number in range(1, 7):
            tg.start_soon(anyio.to_thread.run_sync, time.sleep, 0.05)
            await anyio.sleep(0.01)  # the sleep has taken an idle worker thread
            await sink.write(page(number, {"userId": f"u{number}"}))
    assert len(threads) == 6
    assert set(threads) == {threads[0]} and threads[0] != threading.get_ident()


async def test_checkpoint_token_is_empty_and_any_token_resumes(tmp_path: Path) -> None:
    """Pages are committed as written: the token is {} and resume_from accepts it."""
    sink = DuckDBSink(tmp_path / "x.duckdb")
    sink.resume_from({})
    async with sink:
        assert await sink.checkpoint() == {}


async def test_extra_is_json_in_the_table(tmp_path: Path) -> None:
    """A field fetcher does not know lands in `extra`, queryable as JSON."""
    path = tmp_path / "x.duckdb"
    async with DuckDBSink(path) as sink:
        await sink.write(page(1, {"userId": "a", "prospectAdded": 1, "newMetric": 5}))
    with duckdb.connect(str(path), read_only=True) as connection:
        found = connection.execute("SELECT extra->>'newMetric' FROM team_stats").fetchone()
    assert found == ("5",)


# --- real exports ----------------------------------------------------------------------------


async def test_multi_slice_export_reads_back_exactly(tmp_path: Path) -> None:
    """3 windows x 2 types, 30 pages: every record once, every value as the API served it."""
    path = tmp_path / "stats.duckdb"
    run = await tabular.export_slices(tabular.CLEAN, DuckDBSink(path, table="daily"))
    tabular.assert_complete(run)
    tabular.assert_same_table(read_table(path, "daily"), run.expected)


async def test_rerun_replaces_rows_and_never_duplicates(tmp_path: Path) -> None:
    """The same export twice: same row count, rows replaced (later fetched_at)."""
    path = tmp_path / "stats.duckdb"
    await tabular.export_slices(tabular.CLEAN, DuckDBSink(path))
    first = {r["user_id"] + r["type"] + str(r["window_start"]): r for r in read_table(path)}
    rerun = await tabular.export_slices(tabular.CLEAN, DuckDBSink(path))
    tabular.assert_complete(rerun)
    again = read_table(path)
    assert len(again) == len(first)
    tabular.assert_same_table(again, rerun.expected)
    for row in again:
        before = first[row["user_id"] + row["type"] + str(row["window_start"])]
        assert row["fetched_at"] > before["fetched_at"]


async def test_incomplete_run_then_rerun_leaves_no_duplicates(tmp_path: Path) -> None:
    """A run missing page 3 of each query keeps its pages; a clean re-run completes them once."""
    path = tmp_path / "stats.duckdb"
    tabular.assert_page_3_lost(await tabular.export_slices(tabular.FAILING, DuckDBSink(path)))
    assert len(read_table(path)) == tabular.ROWS_WITHOUT_PAGE_3  # committed per page
    rerun = await tabular.export_slices(tabular.CLEAN, DuckDBSink(path))
    tabular.assert_complete(rerun)
    tabular.assert_same_table(read_table(path), rerun.expected)


async def test_resumed_run_fetches_only_what_is_missing(tmp_path: Path) -> None:
    """A checkpointed run missing pages, resumed: only those are fetched; no duplicates."""
    path = tmp_path / "stats.duckdb"
    state = tmp_path / "stats.state.json"
    first = await tabular.export_slices(tabular.FAILING, DuckDBSink(path), state=state, output="db")
    tabular.assert_page_3_lost(first, state)
    second = await tabular.export_slices(tabular.CLEAN, DuckDBSink(path), state=state, output="db")
    tabular.assert_resumed(second)
    tabular.assert_same_table(read_table(path), second.expected)


async def test_pages_of_new_keys_are_inserted_and_a_known_key_switches_to_upserts(
    tmp_path: Path,
) -> None:
    """Fresh keys are inserted; a key already there makes that page and later ones upserts."""
    path = tmp_path / "x.duckdb"
    async with DuckDBSink(path) as sink:
        await sink.write(page(1, {"userId": "a", "prospectAdded": 1}))
        assert not sink._upserting
        await sink.write(page(2, {"userId": "b", "prospectAdded": 2}, {"userId": "a", "opened": 5}))
        assert sink._upserting
        await sink.write(page(3, {"userId": "c", "prospectAdded": 3}))
    rows = {r["user_id"]: r for r in read_table(path)}
    assert sorted(rows) == ["a", "b", "c"]
    assert (rows["a"]["prospect_added"], rows["a"]["opened"]) == (None, 5)


async def test_a_file_another_process_holds_fails_on_entry_saying_so(tmp_path: Path) -> None:
    """DuckDB locks its file: a second program's sink fails before any page, with the fix."""
    path = tmp_path / "held.duckdb"
    holder = subprocess.Popen(  # noqa: ASYNC220  (killed below; only reads one line)
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time\n"
            f"c = duckdb.connect({str(path)!r}); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(SinkError, match="another program has it open; close that first"):
            async with DuckDBSink(path):
                pytest.fail("the sink opened a file another process holds")
    finally:
        holder.kill()
        holder.communicate()  # reaps it and closes its pipe


async def test_row_groups_stay_small(tmp_path: Path) -> None:
    """The file's row groups hold ROW_GROUP_SIZE rows, not DuckDB's 122,880 (peak memory)."""
    path = tmp_path / "groups.duckdb"
    users = 25_000  # three row groups and a part
    async with DuckDBSink(path) as sink:
        batch = 1000
        for number, first in enumerate(range(0, users, batch), start=1):
            records = ({"userId": f"u{i}", "prospectAdded": i} for i in range(first, first + batch))
            await sink.write(page(number, *records))
    with duckdb.connect(str(path), read_only=True) as connection:
        groups = connection.execute(
            "SELECT row_group_id, max(count) FROM pragma_storage_info('team_stats') "
            "WHERE column_name = 'user_id' GROUP BY row_group_id"
        ).fetchall()
        rows = connection.execute("SELECT count(*) FROM team_stats").fetchone()
    assert rows == (users,)
    assert len(groups) >= 3
    assert all(count <= ROW_GROUP_SIZE for _, count in groups)


async def test_a_cancelled_entry_leaves_the_file_free(tmp_path: Path) -> None:
    """Entering in a cancelled scope opens nothing that stays open: the file can be used next."""
    path = tmp_path / "x.duckdb"
    with anyio.CancelScope() as scope:
        scope.cancel()
        async with DuckDBSink(path):
            pytest.fail("entered in a cancelled scope")
    assert not path.exists()  # nothing was opened behind the cancellation
    async with DuckDBSink(path) as sink:
        await sink.write(page(1, {"userId": "a"}))
    assert [row["user_id"] for row in read_table(path)] == ["a"]


async def test_a_cancelled_run_still_closes_and_checkpoints_its_file(tmp_path: Path) -> None:
    """Cancelled mid-run, the sink closes the file before it returns: no write-ahead log left."""
    path = tmp_path / "x.duckdb"
    with anyio.CancelScope() as scope:
        async with DuckDBSink(path) as sink:
            await sink.write(page(1, {"userId": "a"}))
            scope.cancel()
            await anyio.sleep(1)
    assert not path.with_name(path.name + ".wal").exists()
    assert [row["user_id"] for row in read_table(path)] == ["a"]


async def test_the_same_file_twice_in_one_process_says_so(tmp_path: Path) -> None:
    """A second sink on a file this process has open fails on entry, saying what to close."""
    path = tmp_path / "x.duckdb"
    async with DuckDBSink(path):
        with pytest.raises(SinkError, match="this program has it open already"):
            async with DuckDBSink(path, table="other"):
                pytest.fail("opened a file this process holds")


async def test_the_file_is_reopened_every_few_pages_and_nothing_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every REOPEN_AFTER_PAGES pages the sink reopens its file; rows stay one per key."""
    monkeypatch.setattr(duckdb_sink, "REOPEN_AFTER_PAGES", 3)
    path = tmp_path / "x.duckdb"
    async with DuckDBSink(path) as sink:
        for number in range(1, 11):
            await sink.write(page(number, {"userId": f"u{number}", "prospectAdded": number}))
        # The same users again, after a reopen: replaced, not added.
        for number in range(1, 5):
            await sink.write(page(number, {"userId": f"u{number}", "prospectAdded": 100}))
    assert sink.reopens == 4  # before pages 4, 7, 10 and the second round's 3rd page
    rows = {row["user_id"]: row["prospect_added"] for row in read_table(path)}
    assert rows == {f"u{n}": 100 if n <= 4 else n for n in range(1, 11)}


async def test_a_failed_reopen_names_the_page_and_keeps_what_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the file cannot be opened again (another program took it), the page is named."""
    monkeypatch.setattr(duckdb_sink, "REOPEN_AFTER_PAGES", 2)
    path = tmp_path / "x.duckdb"
    sink = DuckDBSink(path)
    async with sink:
        await sink.write(page(1, {"userId": "a"}))
        await sink.write(page(2, {"userId": "b"}))

        def taken() -> None:
            raise SinkError("cannot open the DuckDB database: locked")

        monkeypatch.setattr(sink, "_open", taken)
        with pytest.raises(SinkError) as info:
            await sink.write(page(3, {"userId": "c"}))
    assert info.value.page is not None and info.value.page.page == 3
    assert sorted(row["user_id"] for row in read_table(path)) == ["a", "b"]


async def test_a_checkpoint_that_fails_at_a_reopen_is_a_sink_error_naming_the_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The close before a reopen checkpoints; if DuckDB fails there, the page is named."""
    monkeypatch.setattr(duckdb_sink, "REOPEN_AFTER_PAGES", 1)
    sink = DuckDBSink(tmp_path / "x.duckdb")
    async with sink:
        await sink.write(page(1, {"userId": "a"}))
        real = sink._connection

        class FullDisk:
            def close(self) -> None:
                raise duckdb.IOException("could not write: no space left on device")

        sink._connection = FullDisk()  # type: ignore[assignment]
        with pytest.raises(SinkError, match=r"could not checkpoint.*no space left") as info:
            await sink.write(page(2, {"userId": "b"}))
        assert info.value.page is not None and info.value.page.page == 2
        assert real is not None
        real.close()
