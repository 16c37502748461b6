"""The CSV and Parquet sinks: file format, atomic completion, resume, and real exports."""

from __future__ import annotations

import csv
import datetime as dt
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fetcher.errors import ConfigError, SinkError
from fetcher.models import Page
from fetcher.sinks import ResumableSink
from fetcher.sinks._schema import COLUMN_KINDS, COLUMNS, KEY_COLUMNS, SCHEMA_ID
from fetcher.sinks.csv import CsvSink, encode_header, encode_page
from fetcher.sinks.parquet import ParquetSink
from tests import tabular

SPEC = tabular.day_query()


def page(number: int, *users: str) -> Page:
    records: list[dict[str, Any]] = [
        {"userId": u, "firstName": "F", "lastName": "L", "email": f"{u}@x", "emailSent": 7}
        for u in users
    ]
    return Page(SPEC, number, records, fetched_at=tabular.FETCHED)


# --- reading back with each format's own tool -------------------------------------------------


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows via the csv module, typed back: timestamps, ints, empty -> None."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == list(COLUMNS)
        out = []
        for raw in reader:
            row: dict[str, Any] = {}
            for column, text in raw.items():
                kind = COLUMN_KINDS[column]
                if text == "":
                    row[column] = None
                elif kind == "timestamp":
                    row[column] = dt.datetime.fromisoformat(text)
                elif kind == "count":
                    row[column] = int(text)
                else:
                    row[column] = text
            out.append(row)
    return out


def read_parquet(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


# --- CSV -------------------------------------------------------------------------------------


def test_file_sinks_are_resumable_sinks(tmp_path: Path) -> None:
    """CSV and Parquet sinks satisfy the ResumableSink protocol."""
    assert isinstance(CsvSink(tmp_path / "x.csv"), ResumableSink)
    assert isinstance(ParquetSink(tmp_path / "x.parquet"), ResumableSink)


def test_csv_header_is_the_schema_columns() -> None:
    """The header names every column in schema order, CRLF-terminated."""
    assert encode_header() == (",".join(COLUMNS) + "\r\n").encode()


def test_csv_row_format() -> None:
    """Timestamps are ISO 8601 with milliseconds and offset; NULL is an empty field."""
    line = encode_page(page(1, "a")).decode()
    fields = next(csv.reader([line]))
    row = dict(zip(COLUMNS, fields, strict=True))
    assert row["window_start"] == "2024-01-01T00:00:00.000+00:00"
    assert row["window_end"] == "2024-01-01T23:59:59.999+00:00"
    assert row["fetched_at"] == "2024-01-02T03:04:05.678+00:00"
    assert (row["type"], row["count_by"], row["user_id"]) == ("email", "absolute", "a")
    assert row["email_sent"] == "7"
    assert row["prospect_added"] == ""  # not an email metric
    assert row["extra"] == ""


async def test_csv_header_once_and_atomic_completion(tmp_path: Path) -> None:
    """Rows go to NAME.partial (header once); NAME appears only on a clean exit."""
    out = tmp_path / "sub" / "stats.csv"
    async with CsvSink(out) as sink:
        await sink.write(page(1, "a", "b"))
        await sink.write(page(2, "c"))
        assert not out.exists()
        assert (tmp_path / "sub" / "stats.csv.partial").exists()
    assert not (tmp_path / "sub" / "stats.csv.partial").exists()
    lines = out.read_bytes().split(b"\r\n")
    assert lines[0] == b",".join(c.encode() for c in COLUMNS)
    assert [r["user_id"] for r in read_csv(out)] == ["a", "b", "c"]


async def test_csv_failed_run_leaves_no_final_file(tmp_path: Path) -> None:
    """On an exception NAME is not created and an earlier NAME is untouched."""
    out = tmp_path / "stats.csv"
    out.write_text("previous\n")
    with pytest.raises(RuntimeError):
        async with CsvSink(out) as sink:
            await sink.write(page(1, "a"))
            raise RuntimeError("run failed")
    assert out.read_text() == "previous\n"
    assert len(read_csv(tmp_path / "stats.csv.partial")) == 1


async def test_csv_resume_truncates_to_the_checkpoint_without_a_second_header(
    tmp_path: Path,
) -> None:
    """Rows after the checkpoint are dropped; the resumed run appends, header once."""
    out = tmp_path / "stats.csv"
    token = await tabular.checkpoint_then_fail(CsvSink(out), page(1, "a"), page(2, "lost"))
    assert token == {"offset": token["offset"], "schema": SCHEMA_ID}
    resumed = CsvSink(out)
    resumed.resume_from(token)
    async with resumed:
        await resumed.write(page(2, "b"))
    assert [r["user_id"] for r in read_csv(out)] == ["a", "b"]


def test_csv_resume_refuses_a_shorter_file_or_other_columns(tmp_path: Path) -> None:
    """A checkpoint the partial file cannot honour raises SinkError (the run starts over)."""
    out = tmp_path / "stats.csv"
    (tmp_path / "stats.csv.partial").write_bytes(encode_header())
    with pytest.raises(SinkError, match=r"has \d+ bytes"):
        CsvSink(out).resume_from({"offset": 10_000, "schema": SCHEMA_ID})
    with pytest.raises(SinkError, match="other columns"):
        CsvSink(out).resume_from({"offset": len(encode_header()), "schema": "old"})
    with pytest.raises(SinkError, match="missing"):
        CsvSink(tmp_path / "gone.csv").resume_from({"offset": 500, "schema": SCHEMA_ID})


async def test_csv_record_without_user_id_stops_the_write(tmp_path: Path) -> None:
    """A record that cannot be keyed is a SinkError naming the page; nothing of it is written."""
    bad = Page(SPEC, 4, [{"userId": "a"}, {"emailSent": 1}], fetched_at=tabular.FETCHED)
    async with CsvSink(tmp_path / "x.csv") as sink:
        with pytest.raises(SinkError, match="page 4 of query"):
            await sink.write(bad)
        assert sink.records == 0


# --- Parquet ---------------------------------------------------------------------------------


async def test_parquet_types_and_metadata(tmp_path: Path) -> None:
    """Timestamps are UTC milliseconds, counts int64, text strings; key columns not null."""
    out = tmp_path / "stats.parquet"
    async with ParquetSink(out) as sink:
        await sink.write(page(1, "a"))
    schema = pq.read_schema(out)
    assert schema.names == list(COLUMNS)
    assert schema.field("window_start").type == pa.timestamp("ms", tz="UTC")
    assert schema.field("fetched_at").type == pa.timestamp("ms", tz="UTC")
    assert schema.field("email_sent").type == pa.int64()
    assert schema.field("user_id").type == pa.string()
    assert schema.field("extra").type == pa.string()
    assert [f.name for f in schema if not f.nullable] == list(KEY_COLUMNS)
    assert schema.metadata[b"fetcher.schema"] == SCHEMA_ID.encode()
    (row,) = read_parquet(out)
    assert row["fetched_at"] == dt.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    assert (row["email_sent"], row["prospect_added"], row["extra"]) == (7, None, None)


async def test_parquet_spools_pages_to_disk_and_bounds_row_groups(tmp_path: Path) -> None:
    """Each page goes to the spool file as it arrives; the final file has bounded row groups."""
    out = tmp_path / "stats.parquet"
    sizes = []
    async with ParquetSink(out, row_group_rows=25) as sink:
        for number in range(1, 21):
            await sink.write(page(number, *(f"u{number}-{i}" for i in range(10))))
            sizes.append(sink.spool.stat().st_size)
        assert not out.exists()
    assert sizes == sorted(sizes) and len(set(sizes)) == 20  # every page hit the disk
    assert not sink.spool.exists()
    assert not (tmp_path / "stats.parquet.partial").exists()
    metadata = pq.ParquetFile(out).metadata
    assert metadata.num_rows == 200
    groups = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    assert max(groups) <= 25


async def test_parquet_failed_run_keeps_the_spool_and_no_file(tmp_path: Path) -> None:
    """A failed run leaves the spool for a resume and creates neither NAME nor NAME.partial."""
    out = tmp_path / "stats.parquet"
    with pytest.raises(RuntimeError):
        async with ParquetSink(out) as sink:
            await sink.write(page(1, "a"))
            raise RuntimeError("run failed")
    assert not out.exists()
    assert not (tmp_path / "stats.parquet.partial").exists()
    assert sink.partial == sink.spool and sink.spool.stat().st_size > 0


async def test_parquet_resume_drops_batches_after_the_checkpoint(tmp_path: Path) -> None:
    """Resuming truncates the spool to the checkpoint, then appends; the file has each row once."""
    out = tmp_path / "stats.parquet"
    sink = ParquetSink(out)
    token = await tabular.checkpoint_then_fail(sink, page(1, "a"), page(2, "lost"))
    with sink.spool.open("ab") as torn:
        torn.write(b"\xff\xff\xff\xff\x10half a message")  # a write cut short by the kill
    resumed = ParquetSink(out)
    resumed.resume_from(token)
    async with resumed:
        await resumed.write(page(2, "b"))
    assert [r["user_id"] for r in read_parquet(out)] == ["a", "b"]


async def test_parquet_with_no_rows_writes_an_empty_table(tmp_path: Path) -> None:
    """An export without records still produces a valid file with the schema."""
    out = tmp_path / "empty.parquet"
    async with ParquetSink(out) as sink:
        await sink.write(page(1))
    assert pq.read_table(out).num_rows == 0
    assert pq.read_schema(out).names == list(COLUMNS)


def test_parquet_without_pyarrow_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without pyarrow, making the sink says which extra to install."""
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ConfigError, match=r"pip install 'fetcher\[parquet\]'"):
        ParquetSink(tmp_path / "x.parquet")


# --- real exports ----------------------------------------------------------------------------

SINKS = {
    "csv": (CsvSink, read_csv),
    "parquet": (ParquetSink, read_parquet),
}


@pytest.mark.parametrize("kind", SINKS)
async def test_multi_slice_export_reads_back_exactly(tmp_path: Path, kind: str) -> None:
    """3 windows x 2 types, 30 pages: every record once, every value as the API served it."""
    make, read = SINKS[kind]
    out = tmp_path / f"stats.{kind}"
    run = await tabular.export_slices(tabular.CLEAN, make(out))
    tabular.assert_complete(run)
    tabular.assert_same_table(read(out), run.expected)
    assert not out.with_name(out.name + ".partial").exists()


@pytest.mark.parametrize("kind", SINKS)
async def test_incomplete_run_leaves_no_file_and_a_rerun_completes(
    tmp_path: Path, kind: str
) -> None:
    """Pages missing: no NAME; the same export run again writes every record once."""
    make, read = SINKS[kind]
    out = tmp_path / f"stats.{kind}"
    tabular.assert_page_3_lost(await tabular.export_slices(tabular.FAILING, make(out)))
    assert not out.exists()
    rerun = await tabular.export_slices(tabular.CLEAN, make(out))
    tabular.assert_complete(rerun)
    tabular.assert_same_table(read(out), rerun.expected)


@pytest.mark.parametrize("kind", SINKS)
async def test_resumed_run_fetches_only_what_is_missing(tmp_path: Path, kind: str) -> None:
    """Checkpointed run missing page 3 of each query, then resumed: each record exactly once."""
    make, read = SINKS[kind]
    out = tmp_path / f"stats.{kind}"
    state = tmp_path / "stats.state.json"
    first = await tabular.export_slices(tabular.FAILING, make(out), state=state, output=str(out))
    tabular.assert_page_3_lost(first, state)
    assert not out.exists()
    second = await tabular.export_slices(tabular.CLEAN, make(out), state=state, output=str(out))
    tabular.assert_resumed(second)
    tabular.assert_same_table(read(out), second.expected)


async def test_parquet_value_out_of_range_is_a_sink_error_and_writes_nothing(
    tmp_path: Path,
) -> None:
    """A count beyond int64 fails the page with a SinkError naming it; the spool is unchanged."""
    bad = Page(SPEC, 2, [{"userId": "a", "emailSent": 2**70}], fetched_at=tabular.FETCHED)
    async with ParquetSink(tmp_path / "x.parquet") as sink:
        await sink.write(page(1, "a"))
        size = sink.spool.stat().st_size
        with pytest.raises(SinkError, match="page 2 of query"):
            await sink.write(bad)
        assert sink.spool.stat().st_size == size
