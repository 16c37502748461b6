"""The CSV sink: the tabular schema as comma-separated text, one header line.

Columns are :data:`fetcher.sinks._schema.COLUMNS`, always in that order, so
files from different runs line up. Text is UTF-8 without a byte-order mark,
in the :mod:`csv` module's ``excel`` dialect (RFC 4180: commas, ``"``
quoting where needed, CRLF line ends), which spreadsheets, DuckDB, pandas and
PostgreSQL's ``COPY`` all read. Timestamps are ISO 8601 with milliseconds and the
offset (``2024-01-01T00:00:00.000+00:00``). CSV has no NULL: a missing value
(a metric the report type does not have, an empty ``extra``) is an empty
field.

Completion and resume work as in :mod:`fetcher.sinks.jsonl`: rows are
appended to ``NAME.partial`` and flushed page by page, the file is synced and
renamed to ``NAME`` only when the run completes, and a failed run leaves
``NAME.partial`` and no ``NAME``. A checkpoint is the file's length in bytes;
a resumed run truncates ``NAME.partial`` to it and appends without writing the
header again. Running the same export again writes a fresh file, so a re-run
replaces rows rather than adding to them.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import structlog

from fetcher.sinks._common import AppendOnlyFile, FileSink, partial_path
from fetcher.sinks._schema import PLAIN_SCHEMA, TableSchema, schema_for
from fetcher.spec import format_api_datetime

if TYPE_CHECKING:
    from fetcher.models import Page

__all__ = ["CsvSink", "encode_header", "encode_page"]

log = structlog.get_logger("fetcher.sinks.csv")

#: UTF-8 text; the header and every row end with CRLF, as RFC 4180 has it.
ENCODING: Final = "utf-8"


def _encode(table: list[tuple[Any, ...]] | list[tuple[str, ...]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(table)
    return buffer.getvalue().encode(ENCODING)


def encode_header(schema: TableSchema = PLAIN_SCHEMA) -> bytes:
    """The header line: the column names."""
    return _encode([schema.columns])


def encode_page(page: Page, schema: TableSchema = PLAIN_SCHEMA) -> bytes:
    """Encode a page's records as CSV lines (no header).

    Raises:
        SinkError: a record cannot be keyed (see :func:`fetcher.sinks._schema.rows`).
    """
    # csv writes None as an empty field and ints as digits; timestamps are
    # formatted once per page by rows().
    return _encode(schema.rows(page, timestamp=format_api_datetime))


class CsvSink(FileSink):
    """Writes every record as one CSV row to ``path``, after one header line.

    Args:
        path: the output file; written as ``path.partial`` until the run completes.
        workspaces: rows start with a ``workspace`` column (``[[workspaces]]``).
    """

    def __init__(self, path: str | os.PathLike[str], *, workspaces: bool = False) -> None:
        self.path = Path(path)
        self.table_schema = schema_for(workspaces)
        self.partial = partial_path(self.path)
        # The header is written once, by a fresh file; a checkpoint carries the
        # schema so a resume never appends rows of other columns under it.
        self._file = AppendOnlyFile(
            self.partial,
            log=log,
            header=encode_header(self.table_schema),
            schema=self.table_schema.schema_id,
        )
        self.records = 0

    def __repr__(self) -> str:
        return f"CsvSink({str(self.path)!r})"

    def encode(self, page: Page) -> bytes:
        """The page's rows as CSV lines (see :func:`encode_page`)."""
        return encode_page(page, self.table_schema)
