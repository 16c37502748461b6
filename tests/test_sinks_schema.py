"""The tabular record schema, and the factory that picks a sink from --out/--sink/--table."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from fetcher.errors import ConfigError, SinkError
from fetcher.models import Page
from fetcher.sinks import JsonlSink, ResumableSink, Sink
from fetcher.sinks._schema import (
    COLUMN_KINDS,
    COLUMNS,
    KEY_COLUMNS,
    METRIC_COLUMN_NAMES,
    METRIC_COLUMNS,
    METRICS,
    VALUE_COLUMNS,
    check_table_name,
    create_table_sql,
    dedupe,
    rows,
)
from fetcher.sinks.csv import CsvSink
from fetcher.sinks.duckdb import DUCKDB_TYPES, DuckDBSink
from fetcher.sinks.factory import EXTENSIONS, make_sink
from fetcher.sinks.parquet import ParquetSink
from fetcher.sinks.postgres import PostgresSink
from fetcher.spec import EMAIL_METRICS, PROSPECT_METRICS, QuerySpec

IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
PROSPECT = QuerySpec(
    user_ids=("u1", "u2"),
    start=dt.datetime(2024, 1, 1, tzinfo=IST),
    end=dt.datetime(2024, 1, 1, 23, 59, 59, 999999, tzinfo=IST),
    type="prospect",
    count_by="relative",
)
EMAIL = PROSPECT.model_copy(update={"type": "email", "order_by": "emailSent"})
FETCHED = dt.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


def as_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(COLUMNS, row, strict=True))


def one_row(spec: QuerySpec, record: dict[str, Any]) -> dict[str, Any]:
    (row,) = rows(Page(spec, 2, [record], fetched_at=FETCHED))
    return as_dict(row)


# --- the columns -----------------------------------------------------------------------------


def test_column_order_is_fixed() -> None:
    """Key and identity first, one column per metric of both types, then extra, fetched_at."""
    assert COLUMNS[:8] == (
        "window_start",
        "window_end",
        "type",
        "count_by",
        "user_id",
        "first_name",
        "last_name",
        "email",
    )
    assert COLUMNS[8:-2] == METRIC_COLUMNS
    assert COLUMNS[-2:] == ("extra", "fetched_at")
    assert KEY_COLUMNS == ("window_start", "window_end", "type", "count_by", "user_id")
    assert set(VALUE_COLUMNS) == set(COLUMNS) - set(KEY_COLUMNS)
    assert len(set(COLUMNS)) == len(COLUMNS) == 26


def test_metrics_are_the_union_in_reference_order() -> None:
    """Prospect metrics in the reference page's order, then the email-only ones."""
    assert (*PROSPECT_METRICS, "emailSent") == METRICS
    assert set(EMAIL_METRICS) <= set(METRICS)
    assert list(METRIC_COLUMN_NAMES) == list(METRICS)


@pytest.mark.parametrize(
    ("api", "column"),
    [
        ("Meeting Booked", "meeting_booked"),
        ("unSubscribed", "unsubscribed"),
        ("prospectAdded", "prospect_added"),
        ("prospectContacted", "prospect_contacted"),
        ("emailSent", "email_sent"),
        ("Do Not Contact", "do_not_contact"),
        ("Not Interested", "not_interested"),
        ("Out of Office", "out_of_office"),
        ("Uncategorized", "uncategorized"),
    ],
)
def test_metric_column_names(api: str, column: str) -> None:
    """The documented snake_case name of each API metric."""
    assert METRIC_COLUMN_NAMES[api] == column


def test_every_column_is_a_plain_snake_case_identifier() -> None:
    """Column names need no quoting anywhere: lower case, digits, underscores."""
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", c) for c in COLUMNS)
    assert set(COLUMN_KINDS) == set(COLUMNS)


def test_create_table_sql_keys_the_natural_key() -> None:
    """The DDL lists every column in order and a primary key on the natural key."""
    sql = create_table_sql("team_stats", DUCKDB_TYPES)
    assert sql.startswith('CREATE TABLE IF NOT EXISTS "team_stats"')
    assert re.findall(r'^\s+"(\w+)"', sql, re.M) == list(COLUMNS)
    assert 'PRIMARY KEY ("window_start", "window_end", "type", "count_by", "user_id")' in sql


# --- rows() ----------------------------------------------------------------------------------


def test_prospect_record_becomes_one_row() -> None:
    """Window, type and count_by come from the query; values from the record; NULL elsewhere."""
    record: dict[str, Any] = {"userId": "u1", "firstName": "Ana", "lastName": "Kim", "email": "a@x"}
    record |= {metric: n for n, metric in enumerate(PROSPECT_METRICS)}
    row = one_row(PROSPECT, record)
    assert row["window_start"] == dt.datetime(2024, 1, 1, tzinfo=IST)
    assert row["window_end"] == dt.datetime(2024, 1, 1, 23, 59, 59, 999000, tzinfo=IST)
    assert (row["type"], row["count_by"]) == ("prospect", "relative")
    assert (row["user_id"], row["first_name"], row["last_name"], row["email"]) == (
        "u1",
        "Ana",
        "Kim",
        "a@x",
    )
    assert row["prospect_added"] == 0
    assert row["meeting_booked"] == PROSPECT_METRICS.index("Meeting Booked")
    assert row["do_not_contact"] == 14
    assert row["email_sent"] is None  # not a prospect metric
    assert row["extra"] is None
    assert row["fetched_at"] == dt.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)


def test_email_record_leaves_prospect_only_metrics_null() -> None:
    """An email report's row has NULL for metrics only prospect reports have."""
    row = one_row(EMAIL, {"userId": "u1", "emailSent": 9, "opened": 3})
    assert (row["type"], row["email_sent"], row["opened"]) == ("email", 9, 3)
    assert row["prospect_added"] is None and row["meeting_booked"] is None
    assert row["first_name"] is None  # a missing field is NULL, not an error


def test_unknown_fields_are_kept_in_extra() -> None:
    """A field fetcher does not know (a new metric) goes to `extra` as JSON, in record order."""
    row = one_row(PROSPECT, {"userId": "u1", "prospectAdded": 4, "Meetings Held": 2, "tz": "UTC"})
    assert row["prospect_added"] == 4
    assert row["extra"] is not None
    assert orjson.loads(row["extra"]) == {"Meetings Held": 2, "tz": "UTC"}
    assert list(orjson.loads(row["extra"])) == ["Meetings Held", "tz"]


def test_values_that_do_not_fit_their_column_are_kept_in_extra() -> None:
    """A non-integer count or non-text name: column NULL, the value kept in `extra`."""
    row = one_row(
        PROSPECT,
        {"userId": "u1", "opened": 2.5, "clicked": 3.0, "replied": True, "firstName": 7},
    )
    assert (row["opened"], row["clicked"], row["replied"], row["first_name"]) == (
        None,
        3,
        None,
        None,
    )
    assert orjson.loads(row["extra"]) == {"opened": 2.5, "replied": True, "firstName": 7}


def test_numeric_user_id_is_kept_as_text() -> None:
    """A user id sent as a number is still a key; the column is text."""
    assert one_row(PROSPECT, {"userId": 12345})["user_id"] == "12345"


@pytest.mark.parametrize("record", [{"firstName": "Ana"}, {"userId": None}, {"userId": ["x"]}])
def test_record_without_a_usable_user_id_is_a_sink_error(record: dict[str, Any]) -> None:
    """A record that cannot be keyed stops the write with an error naming the page."""
    page = Page(PROSPECT, 7, [{"userId": "ok"}, record], fetched_at=FETCHED)
    with pytest.raises(SinkError, match="cannot be keyed") as info:
        rows(page)
    assert str(info.value).startswith(f"page 7 of query {PROSPECT.key}")


def test_timestamp_hook_formats_the_page_timestamps_once() -> None:
    """`timestamp=` converts window and fetched_at, e.g. to ISO text for CSV."""
    (row,) = rows(
        Page(PROSPECT, 1, [{"userId": "u1"}], fetched_at=FETCHED),
        timestamp=lambda t: t.isoformat(timespec="milliseconds"),
    )
    values = as_dict(row)
    assert values["window_start"] == "2024-01-01T00:00:00.000+05:30"
    assert values["window_end"] == "2024-01-01T23:59:59.999+05:30"
    assert values["fetched_at"] == "2024-01-02T03:04:05.678+00:00"


def test_empty_page_has_no_rows() -> None:
    """No records, no rows."""
    assert rows(Page(PROSPECT, 1, [])) == []


def test_dedupe_keeps_the_last_row_per_user() -> None:
    """Within a page the key varies only by user: a repeated user keeps its last row."""
    page_rows = rows(
        Page(
            EMAIL,
            1,
            [{"userId": "a", "opened": 1}, {"userId": "b"}, {"userId": "a", "opened": 2}],
        )
    )
    kept = [as_dict(r) for r in dedupe(page_rows)]
    assert [(r["user_id"], r["opened"]) for r in kept] == [("a", 2), ("b", None)]
    unique = page_rows[1:]
    assert dedupe(unique) is unique


@pytest.mark.parametrize("name", ["team_stats", "_x", "Stats2024", "a" * 63])
def test_plain_table_names_are_accepted(name: str) -> None:
    """Letters, digits and underscores, not starting with a digit, up to 63 characters."""
    assert check_table_name(name) == name


# --- the factory -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("x.jsonl", JsonlSink),
        ("x.ndjson", JsonlSink),
        ("x.csv", CsvSink),
        ("X.CSV", CsvSink),
        ("x.parquet", ParquetSink),
        ("x.duckdb", DuckDBSink),
        ("x.db", DuckDBSink),
    ],
)
def test_out_extension_picks_the_sink(tmp_path: Path, name: str, kind: type) -> None:
    """--out's extension decides the format."""
    sink = make_sink(tmp_path / name)
    assert type(sink) is kind
    assert isinstance(sink, Sink) and isinstance(sink, ResumableSink)


def test_unknown_extension_lists_the_supported_ones(tmp_path: Path) -> None:
    """An extension fetcher does not know is a ConfigError on --out naming every choice."""
    with pytest.raises(ConfigError) as info:
        make_sink(tmp_path / "stats.xlsx")
    assert info.value.field == "--out"
    assert all(ext in info.value.message for ext in EXTENSIONS)


def test_sink_name_wins_over_the_extension(tmp_path: Path) -> None:
    """--sink duckdb with any file name makes a DuckDB sink, with --table."""
    sink = make_sink(tmp_path / "warehouse.data", sink="duckdb", table="daily")
    assert isinstance(sink, DuckDBSink) and sink.table == "daily"
    assert isinstance(make_sink(tmp_path / "a.txt", sink="CSV"), CsvSink)


def test_file_sink_needs_out() -> None:
    """Without --out only PostgreSQL can be written."""
    with pytest.raises(ConfigError) as info:
        make_sink(None)
    assert info.value.field == "--out"
    with pytest.raises(ConfigError, match=r"--out stats\.duckdb"):
        make_sink(None, sink="duckdb")


def test_unknown_sink_name_is_a_config_error(tmp_path: Path) -> None:
    """--sink accepts only the known kinds."""
    with pytest.raises(ConfigError, match="jsonl, csv, parquet, duckdb, postgres") as info:
        make_sink(tmp_path / "x.csv", sink="sqlite")
    assert info.value.field == "--sink"


def test_postgres_needs_a_connection_string() -> None:
    """--sink postgres without a DSN says where to put one."""
    for dsn in (None, "", SecretStr("  ")):
        with pytest.raises(ConfigError, match=r"FETCHER_POSTGRES_DSN.*postgres_dsn"):
            make_sink(None, sink="postgres", postgres_dsn=dsn)


def test_postgres_sink_from_a_secret_dsn_with_table() -> None:
    """--sink postgres makes a PostgresSink for the table; --out is not needed."""
    sink = make_sink(
        None,
        sink="postgres",
        table="stats",
        postgres_dsn=SecretStr("postgresql://app:topsecret@db:5432/x"),
    )
    assert isinstance(sink, PostgresSink)
    assert sink.table == "stats"
    assert "topsecret" not in repr(sink)


def test_bad_table_name_is_rejected_by_the_factory(tmp_path: Path) -> None:
    """--table is checked for database sinks before any request."""
    with pytest.raises(ConfigError) as info:
        make_sink(tmp_path / "x.duckdb", table="drop table")
    assert info.value.field == "--table"
