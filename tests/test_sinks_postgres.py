"""The PostgreSQL sink against a real server: keyed upserts, one transaction per page, no leaks.

Tests that need the server take the ``pg_dsn`` fixture: without a server they
are skipped with the reason, except under ``CI=true``, where they fail (see
:mod:`tests.pg`).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from fetcher.errors import ConfigError, SinkError
from fetcher.models import Page
from fetcher.simulator import serve
from fetcher.sinks import ResumableSink
from fetcher.sinks._schema import COLUMNS
from fetcher.sinks.postgres import PostgresSink, describe_dsn, dsn_secrets, redact
from tests import tabular
from tests.pg import require_postgres, server_dsn, unique_table

#: Nothing listens on port 9 (discard) on the test machines: connections are refused.
UNREACHABLE = "postgresql://postgres:hunter2-secret@127.0.0.1:9/test"

SPEC = tabular.day_query()


def page(number: int, *records: dict[str, Any]) -> Page:
    return Page(SPEC, number, list(records))


@pytest.fixture
async def pg_dsn() -> str:
    """The test server's DSN; skips (or fails under CI=true) when it is not reachable."""
    dsn = server_dsn()
    await require_postgres(dsn)
    return dsn


@pytest.fixture
async def pg_table(pg_dsn: str) -> AsyncIterator[str]:
    """A table name of this test's own, dropped afterwards."""
    name = unique_table()
    yield name
    connection = await asyncpg.connect(pg_dsn)
    try:
        await connection.execute(f'DROP TABLE IF EXISTS "{name}"')
    finally:
        await connection.close()


async def read_table(dsn: str, table: str) -> list[dict[str, Any]]:
    """Every row, read with asyncpg itself."""
    connection = await asyncpg.connect(dsn)
    try:
        return [dict(record) for record in await connection.fetch(f'SELECT * FROM "{table}"')]
    finally:
        await connection.close()


# --- when the server is missing --------------------------------------------------------------


async def test_missing_server_is_skipped_with_a_reason_outside_ci() -> None:
    """Unreachable and CI unset (or not "true"): the test is skipped, saying where it looked."""
    for env in ({}, {"CI": "false"}, {"CI": "1"}):
        with pytest.raises(pytest.skip.Exception, match=r"not reachable at .*127\.0\.0\.1:9"):
            await require_postgres("postgresql://postgres@127.0.0.1:9/test", env)


async def test_missing_server_fails_under_ci() -> None:
    """Unreachable with CI=true: a failure, never a silent skip."""
    with pytest.raises(pytest.fail.Exception, match="CI=true requires PostgreSQL"):
        await require_postgres("postgresql://postgres@127.0.0.1:9/test", {"CI": "true"})


def test_server_dsn_comes_from_the_environment() -> None:
    """FETCHER_TEST_POSTGRES_DSN points the tests at another server."""
    assert server_dsn({}) == "postgresql://postgres@127.0.0.1:5432/test"
    assert server_dsn({"FETCHER_TEST_POSTGRES_DSN": "postgresql://x@h/db"}) == "postgresql://x@h/db"


# --- secrets ---------------------------------------------------------------------------------


def test_repr_and_target_hide_the_password() -> None:
    """The repr and the shown target carry the host, never the password."""
    sink = PostgresSink(
        SecretStr("postgresql://app:s3cr%40t@db.internal:5433/stats?sslmode=require")
    )
    assert (
        repr(sink)
        == "PostgresSink('postgresql://app:***@db.internal:5433/stats', table='team_stats')"
    )
    assert "s3cr" not in repr(sink) and "s3cr" not in sink.target
    assert set(sink.secrets) == {"s3cr%40t", "s3cr@t"}
    assert isinstance(sink, ResumableSink)


@pytest.mark.parametrize(
    ("text", "dsn", "hidden"),
    [
        ("at postgresql://u:pw1@h/db failed", None, "pw1"),
        ("at postgres://u:p@ss@h/db failed", "postgres://u:p@ss@h/db", "p@ss"),
        ("host=h password='a b c' user=u", None, "a b c"),
        ("postgresql://u@h/db?password=qq9&sslmode=x", None, "qq9"),
        ("the server said: wrong password zz77", "postgresql://u:zz77@h/db", "zz77"),
    ],
)
def test_redact_removes_passwords(text: str, dsn: str | None, hidden: str) -> None:
    """Passwords in URLs, key=value strings and free text (when known) become ***."""
    redacted = redact(text, dsn)
    assert hidden not in redacted
    assert "***" in redacted


def test_describe_dsn_without_password_keeps_it_readable() -> None:
    """A DSN without a password is shown as is (less the query)."""
    assert describe_dsn("postgresql://postgres@127.0.0.1:5432/test") == (
        "postgresql://postgres@127.0.0.1:5432/test"
    )
    assert dsn_secrets("postgresql://postgres@127.0.0.1:5432/test") == []


async def test_unreachable_server_fails_on_enter_without_the_password() -> None:
    """Connection refused: SinkError on entry, naming the host and hiding the password."""
    sink = PostgresSink(UNREACHABLE, connect_timeout=5)
    with pytest.raises(SinkError) as info:
        async with sink:
            pytest.fail("entered without a server")
    message = str(info.value)
    assert "cannot connect to PostgreSQL at postgresql://postgres:***@127.0.0.1:9/test" in message
    assert "FETCHER_POSTGRES_DSN" in message
    assert "hunter2" not in message
    assert info.value.__cause__ is None


def test_without_asyncpg_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without asyncpg, making the sink says which extra to install."""
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    with pytest.raises(ConfigError, match=r"pip install 'fetcher\[postgres\]'"):
        PostgresSink(UNREACHABLE)


def test_table_name_must_be_an_identifier() -> None:
    """A table name that is not a plain identifier is a ConfigError naming --table."""
    with pytest.raises(ConfigError) as info:
        PostgresSink(UNREACHABLE, table="team-stats")
    assert info.value.field == "--table"


# --- against the server ----------------------------------------------------------------------


async def test_table_is_created_with_the_schema_and_key(pg_dsn: str, pg_table: str) -> None:
    """Entering creates the table: schema columns, PostgreSQL types, primary key on the key."""
    async with PostgresSink(pg_dsn, pg_table):
        pass
    connection = await asyncpg.connect(pg_dsn)
    try:
        types = {
            r["column_name"]: r["data_type"]
            for r in await connection.fetch(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = $1 ORDER BY ordinal_position",
                pg_table,
            )
        }
        key = await connection.fetchval(
            "SELECT array_agg(a.attname ORDER BY k.ord) FROM pg_index i "
            "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = $1::regclass AND i.indisprimary",
            f'"{pg_table}"',
        )
    finally:
        await connection.close()
    assert list(types) == list(COLUMNS)
    assert types["window_start"] == "timestamp with time zone"
    assert types["email_sent"] == "bigint"
    assert types["extra"] == "jsonb"
    assert key == ["window_start", "window_end", "type", "count_by", "user_id"]


async def test_existing_table_with_other_columns_fails_on_enter(pg_dsn: str, pg_table: str) -> None:
    """A table of the same name but another shape is refused before anything is fetched."""
    connection = await asyncpg.connect(pg_dsn)
    try:
        await connection.execute(f'CREATE TABLE "{pg_table}" (id int, note text)')
    finally:
        await connection.close()
    with pytest.raises(SinkError, match=r"other columns.*choose another --table"):
        async with PostgresSink(pg_dsn, pg_table):
            pass


async def test_a_page_is_one_transaction(pg_dsn: str, pg_table: str) -> None:
    """A page PostgreSQL refuses leaves none of its rows; earlier pages stay committed."""
    async with PostgresSink(pg_dsn, pg_table) as sink:
        await sink.write(page(1, {"userId": "a", "emailSent": 1}))
        too_big = page(2, {"userId": "b", "emailSent": 2}, {"userId": "c", "opened": 2**70})
        with pytest.raises(SinkError, match="page 2 of query"):
            await sink.write(too_big)
        await sink.write(page(3, {"userId": "d", "emailSent": 4}))
    assert sorted(r["user_id"] for r in await read_table(pg_dsn, pg_table)) == ["a", "d"]


async def test_upsert_replaces_rows_and_extra_is_jsonb(pg_dsn: str, pg_table: str) -> None:
    """Writing a key again replaces its row; unknown fields are queryable in `extra`."""
    async with PostgresSink(pg_dsn, pg_table) as sink:
        await sink.write(page(1, {"userId": "a", "emailSent": 1}))
        await sink.write(page(2, {"userId": "a", "emailSent": 2, "newMetric": 9}))
        assert await sink.checkpoint() == {}
    (row,) = await read_table(pg_dsn, pg_table)
    assert row["email_sent"] == 2
    connection = await asyncpg.connect(pg_dsn)
    try:
        assert await connection.fetchval(f"SELECT extra->>'newMetric' FROM \"{pg_table}\"") == "9"
    finally:
        await connection.close()


async def test_multi_slice_export_reads_back_exactly(pg_dsn: str, pg_table: str) -> None:
    """3 windows x 2 types, 30 pages: every record once, every value as the API served it."""
    run = await tabular.export_slices(tabular.CLEAN, PostgresSink(pg_dsn, pg_table))
    tabular.assert_complete(run)
    tabular.assert_same_table(await read_table(pg_dsn, pg_table), run.expected)


async def test_rerun_replaces_rows_and_never_duplicates(pg_dsn: str, pg_table: str) -> None:
    """The same export twice: same row count, rows replaced (later fetched_at)."""
    await tabular.export_slices(tabular.CLEAN, PostgresSink(pg_dsn, pg_table))
    first = {
        (r["user_id"], r["type"], r["window_start"]): r for r in await read_table(pg_dsn, pg_table)
    }
    rerun = await tabular.export_slices(tabular.CLEAN, PostgresSink(pg_dsn, pg_table))
    tabular.assert_complete(rerun)
    again = await read_table(pg_dsn, pg_table)
    assert len(again) == len(first)
    tabular.assert_same_table(again, rerun.expected)
    for row in again:
        before = first[row["user_id"], row["type"], row["window_start"]]
        assert row["fetched_at"] > before["fetched_at"]


async def test_incomplete_run_then_rerun_leaves_no_duplicates(pg_dsn: str, pg_table: str) -> None:
    """A run missing page 3 of each query keeps its pages; a clean re-run completes them once."""
    failed = await tabular.export_slices(tabular.FAILING, PostgresSink(pg_dsn, pg_table))
    tabular.assert_page_3_lost(failed)
    assert len(await read_table(pg_dsn, pg_table)) == tabular.ROWS_WITHOUT_PAGE_3
    rerun = await tabular.export_slices(tabular.CLEAN, PostgresSink(pg_dsn, pg_table))
    tabular.assert_complete(rerun)
    tabular.assert_same_table(await read_table(pg_dsn, pg_table), rerun.expected)


async def test_resumed_run_fetches_only_what_is_missing(
    pg_dsn: str, pg_table: str, tmp_path: Path
) -> None:
    """A checkpointed run missing pages, resumed: only those are fetched; no duplicates."""
    state = tmp_path / "pg.state.json"
    output = f"postgres:{pg_table}"
    sink = PostgresSink(pg_dsn, pg_table)
    first = await tabular.export_slices(tabular.FAILING, sink, state=state, output=output)
    tabular.assert_page_3_lost(first, state)
    sink = PostgresSink(pg_dsn, pg_table)
    second = await tabular.export_slices(tabular.CLEAN, sink, state=state, output=output)
    tabular.assert_resumed(second)
    tabular.assert_same_table(await read_table(pg_dsn, pg_table), second.expected)


async def test_password_never_reaches_the_logs(pg_dsn: str, pg_table: str) -> None:
    """A full export with a password in the DSN logs the target redacted, never the password."""
    with_password = pg_dsn.replace("postgres@", "postgres:pw-never-logged@", 1)
    assert "pw-never-logged" in with_password  # trust auth ignores it
    sink = PostgresSink(with_password, pg_table)
    with capture_logs() as events:
        async with serve(tabular.CLEAN) as sim:
            summary = await tabular.run_export(sim, tabular.slice_specs(sim)[:1], sink)
    assert summary.ok
    assert "pw-never-logged" not in repr(events) + repr(summary.to_dict()) + repr(sink)
    complete = [e for e in events if e["event"] == "output.complete"]
    assert complete and complete[0]["target"] == describe_dsn(with_password)
