"""The Parquet sink: the tabular schema as one Parquet file, built when the run completes.

A Parquet file cannot be appended to or cut back (its index sits in a footer
written last), yet a run may have 20,000 pages, and a crash must be resumable
from the last checkpoint. So the sink works in two steps:

1. **Spool.** Each page becomes one Arrow record batch, appended (as one
   encapsulated Arrow IPC message) to ``NAME.partial.spool`` and flushed.
   Nothing accumulates in memory, and a checkpoint is simply the spool's
   length in bytes: a resumed run truncates the spool to it, dropping batches
   written after the checkpoint (those pages are fetched again), and appends.
   Arrow IPC rather than JSON lines because the values are already typed:
   the final conversion is a copy, not a parse.
2. **Convert.** On a clean exit the spool is read back one batch at a time
   and written with :class:`pyarrow.parquet.ParquetWriter` to
   ``NAME.partial`` in row groups of at most ``row_group_rows`` rows (the
   memory the conversion needs), synced, renamed atomically to ``NAME``, and
   the spool is deleted.

A failed run leaves the spool (every page written so far, for a resume) and
no ``NAME``; an earlier complete ``NAME`` is untouched. Running the same
export again writes a fresh file, so a re-run replaces rows.

Columns and Arrow types follow :mod:`fetcher.sinks._schema`: timestamps are
``timestamp[ms, tz=UTC]``, counts ``int64``, text and ``extra`` (JSON text)
``string``; the key columns are non-nullable. The file's metadata names the
schema (``fetcher.schema``) and the natural key (``fetcher.key``).

pyarrow is an optional dependency (``pip install 'fetcher[parquet]'``); it is
imported only when a Parquet sink is made, so the rest of fetcher starts
without it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Final

import anyio
import structlog

from fetcher.errors import ConfigError, SinkError
from fetcher.sinks._common import (
    AppendOnlyFile,
    FileSink,
    partial_path,
    replace_atomically,
    writing,
)
from fetcher.sinks._schema import PLAIN_SCHEMA, TableSchema, schema_for

if TYPE_CHECKING:
    import pyarrow as pa

    from fetcher.models import Page

__all__ = ["ParquetSink", "arrow_schema"]

log = structlog.get_logger("fetcher.sinks.parquet")

#: Rows per Parquet row group: the most the final conversion holds in memory.
DEFAULT_ROW_GROUP_ROWS: Final = 65_536

#: The spool's name is the output's in-progress name plus this.
SPOOL_SUFFIX: Final = ".spool"


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: PLC0415  (optional; only checked here)
        import pyarrow.parquet  # noqa: F401, PLC0415
    except ImportError:
        raise ConfigError(
            "Parquet output needs pyarrow, which is not installed: pip install 'fetcher[parquet]'",
            field="--out",
        ) from None


def arrow_schema(table_schema: TableSchema = PLAIN_SCHEMA) -> pa.Schema:
    """The Arrow schema of the file: the table schema's columns with Arrow types.

    Raises:
        ConfigError: pyarrow is not installed.
    """
    _require_pyarrow()
    import pyarrow as pa  # noqa: PLC0415  (optional dependency)

    types = {
        "timestamp": pa.timestamp("ms", tz="UTC"),
        "text": pa.string(),
        "count": pa.int64(),
        "json": pa.string(),
    }
    fields = [
        pa.field(name, types[table_schema.kinds[name]], nullable=name not in table_schema.key)
        for name in table_schema.columns
    ]
    metadata: dict[bytes | str, bytes | str] = {
        "fetcher.schema": table_schema.schema_id,
        "fetcher.key": ",".join(table_schema.key),
    }
    return pa.schema(fields, metadata=metadata)


class ParquetSink(FileSink):
    """Writes every record as one row of a Parquet file at ``path``.

    Args:
        path: the output file; it appears only when the run completes.
        row_group_rows: rows per row group, which bounds the memory of the
            final conversion.
        workspaces: rows start with a ``workspace`` column (``[[workspaces]]``).

    Raises:
        ConfigError: pyarrow is not installed.

    Attributes:
        spool: where pages are kept until the run completes (and after a failed run).
        partial: the same as ``spool``: what a failed run leaves behind.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
        workspaces: bool = False,
    ) -> None:
        self.table_schema = schema_for(workspaces)
        self.schema = arrow_schema(self.table_schema)
        self.path = Path(path)
        self.temporary = partial_path(self.path)
        self.spool = self.temporary.with_name(self.temporary.name + SPOOL_SUFFIX)
        self.partial = self.spool
        self.row_group_rows = max(1, row_group_rows)
        self._file = AppendOnlyFile(self.spool, log=log, schema=self.table_schema.schema_id)
        self.records = 0

    def __repr__(self) -> str:
        return f"ParquetSink({str(self.path)!r})"

    async def write(self, page: Page) -> None:
        """Append the page to the spool as one Arrow record batch.

        Raises:
            SinkError: a record cannot be keyed, a value does not fit its Arrow
                type, or the spool cannot be written.
        """
        import pyarrow as pa  # noqa: PLC0415  (optional dependency)

        assert self._file.is_open, "use the sink as an async context manager"
        if not page.records:
            return
        try:
            with writing(self.spool, page.ref):
                await anyio.to_thread.run_sync(self._write, page)
        except (pa.ArrowException, OverflowError) as exc:
            raise SinkError(
                f"cannot convert the page to Arrow: {type(exc).__name__}: {exc}", page=page.ref
            ) from exc
        self.records += len(page.records)

    def _write(self, page: Page) -> None:
        import pyarrow as pa  # noqa: PLC0415  (optional dependency)

        schema = self.schema
        columns = list(zip(*self.table_schema.rows(page), strict=True))
        count = len(columns[0])
        batch = pa.RecordBatch.from_arrays(
            [
                # A page-wide value is converted once and repeated, not once per row.
                pa.repeat(pa.scalar(values[0], type=field.type), count)
                if field.name in self.table_schema.per_page
                else pa.array(values, type=field.type)
                for values, field in zip(columns, schema, strict=True)
            ],
            schema=schema,
        )
        self._file.append(batch.serialize())

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self._file.abort(records=self.records)
            return
        if not self._file.is_open:
            return
        self._file.close()
        import pyarrow as pa  # noqa: PLC0415  (optional dependency)

        try:
            rows_written = await anyio.to_thread.run_sync(self._convert)
        except (OSError, pa.ArrowException) as error:
            with contextlib.suppress(OSError):
                self.temporary.unlink()
            reason = getattr(error, "strerror", None) or error
            raise SinkError(
                f"cannot write {self.temporary} from {self.spool}: {reason}; the spool is "
                "kept for a resumed run (the same command with checkpoints) to retry"
            ) from error
        log.info("output.complete", path=str(self.path), records=rows_written)

    def _convert(self) -> int:
        """Spool -> Parquet, one row group at a time; return the rows written."""
        import pyarrow as pa  # noqa: PLC0415  (optional dependency)
        import pyarrow.ipc  # noqa: PLC0415
        import pyarrow.parquet as pq  # noqa: PLC0415

        schema = self.schema
        total = 0
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        with (
            pa.input_stream(str(self.spool), buffer_size=1 << 20) as source,
            pq.ParquetWriter(str(self.temporary), schema) as writer,
        ):

            def flush() -> None:
                nonlocal pending_rows
                if pending:
                    table = pa.Table.from_batches(pending, schema=schema)
                    writer.write_table(table, row_group_size=self.row_group_rows)
                    pending.clear()
                    pending_rows = 0

            for message in pyarrow.ipc.MessageReader.open_stream(source):
                batch = pyarrow.ipc.read_record_batch(message, schema)
                pending.append(batch)
                pending_rows += batch.num_rows
                total += batch.num_rows
                if pending_rows >= self.row_group_rows:
                    flush()
            flush()
        with self.temporary.open("rb") as done:
            os.fsync(done.fileno())
        replace_atomically(self.temporary, self.path)
        self.spool.unlink()
        return total
