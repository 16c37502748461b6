"""What the sinks share: provenance fields, atomic append-only files, the table check.

The file sinks (:mod:`~fetcher.sinks.jsonl`, :mod:`~fetcher.sinks.csv`,
:mod:`~fetcher.sinks.parquet`) each hold an :class:`AppendOnlyFile` for their
in-progress output; the database sinks (:mod:`~fetcher.sinks.duckdb`,
:mod:`~fetcher.sinks.postgres`) check an existing table with
:func:`check_columns`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Self

import anyio

from fetcher.errors import SinkError
from fetcher.files import replace_atomically, write_atomically
from fetcher.sinks._schema import PLAIN_SCHEMA, TableSchema, dedupe

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer
    from structlog.typing import FilteringBoundLogger

    from fetcher.errors import PageRef
    from fetcher.models import Page

__all__ = [
    "PARTIAL_SUFFIX",
    "AppendOnlyFile",
    "FileSink",
    "TableSink",
    "check_columns",
    "partial_path",
    "provenance",
    "replace_atomically",
    "write_atomically",
    "writing",
]

#: Files are written under ``NAME.partial`` and renamed to ``NAME`` only when the
#: run completes, so a file named ``NAME`` is always a complete export.
PARTIAL_SUFFIX = ".partial"


def partial_path(path: Path) -> Path:
    """Where the in-progress output for ``path`` lives."""
    return path.with_name(path.name + PARTIAL_SUFFIX)


def provenance(page: Page) -> dict[str, Any]:
    """The fields fetcher adds to each record; they all start with ``_``.

    ``_query`` is the query's key, ``_page`` the page number, ``_type`` and
    ``_count_by`` the report settings, ``_window_start``/``_window_end`` the
    query's window as sent, and ``_fetched_at`` when the page arrived (UTC).
    With ``[[workspaces]]``, ``_workspace`` (the workspace's name) comes first.
    """
    query = page.query
    head = {} if query.workspace is None else {"_workspace": query.workspace}
    return {
        **head,
        "_query": query.key,
        "_page": page.number,
        "_type": query.type,
        "_count_by": query.count_by,
        "_window_start": query.start.isoformat(timespec="milliseconds"),
        "_window_end": query.end.isoformat(timespec="milliseconds"),
        "_fetched_at": page.fetched_at.isoformat(timespec="milliseconds"),
    }


@contextlib.contextmanager
def writing(path: Path, page: PageRef | None = None) -> Iterator[None]:
    """Re-raise an :class:`OSError` while writing ``path`` as a :class:`SinkError`.

    Raises:
        SinkError: ``cannot write PATH: REASON``, naming ``page`` if given.
    """
    try:
        yield
    except OSError as exc:
        raise SinkError(f"cannot write {path}: {exc.strerror or exc}", page=page) from exc


class AppendOnlyFile:
    """An in-progress output file, appended to page by page and continued after a crash.

    A fresh :meth:`open` replaces whatever is at ``path`` (a stale file of an
    earlier run); after :meth:`resume_from` it cuts the file back to the
    checkpoint instead, dropping what was written after it (those pages are
    fetched again), and appends from there. :meth:`write` flushes each page to
    the operating system, :meth:`checkpoint` makes it durable, and
    :meth:`finish` renames the file into place; a failed run calls
    :meth:`abort`, which keeps the file for a resume. Writes and syncs, which
    may wait on the disk, run in a worker thread.

    Args:
        path: the in-progress file, e.g. ``NAME.partial``.
        log: the sink's logger, for ``output.incomplete`` and ``output.complete``.
        header: what a fresh file starts with (the CSV header line); a
            checkpoint is never before its end, so a resumed file keeps it.
        schema: a schema id the checkpoint token carries and a resume must
            match; ``None`` for a token of the offset alone.
    """

    def __init__(
        self,
        path: Path,
        *,
        log: FilteringBoundLogger,
        header: bytes = b"",
        schema: str | None = None,
    ) -> None:
        self.path = path
        self.header = header
        self.schema = schema
        self._log = log
        self._file: IO[bytes] | None = None
        self._resume_at: int | None = None

    @property
    def is_open(self) -> bool:
        """Whether the file is open for writing (between :meth:`open` and the end)."""
        return self._file is not None

    def resume_from(self, token: Mapping[str, Any]) -> None:
        """Make the next :meth:`open` continue from the checkpoint ``token``.

        Raises:
            SinkError: the token has no valid offset or another schema, or the
                file is gone or shorter than the checkpoint.
        """
        offset = token.get("offset")
        if not isinstance(offset, int) or offset < len(self.header):
            raise SinkError(f"checkpoint {dict(token)!r} has no valid offset")
        if self.schema is not None and token.get("schema") != self.schema:
            raise SinkError(f"cannot resume: {self.path} was written with other columns")
        try:
            size = self.path.stat().st_size
        except OSError:
            raise SinkError(f"cannot resume: {self.path} is missing") from None
        if size < offset:
            raise SinkError(f"cannot resume: {self.path} has {size} bytes, the checkpoint {offset}")
        self._resume_at = offset

    def open(self) -> None:
        """Start a fresh file (header written), or cut a resumed one back to its checkpoint.

        Raises:
            SinkError: the file or its directory cannot be written.
        """
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self._resume_at is None:
                self._file = self.path.open("wb")
                if self.header:
                    self._file.write(self.header)
                    self._file.flush()
            else:
                self._file = self.path.open("r+b")
                self._file.truncate(self._resume_at)
                self._file.seek(self._resume_at)

    async def write(self, data: ReadableBuffer) -> None:
        """Append ``data`` and flush it to the operating system, in a worker thread.

        Raises:
            OSError: the write failed (callers that name the page wrap this in
                :func:`writing`).
        """
        await anyio.to_thread.run_sync(self.append, data)

    def append(self, data: ReadableBuffer) -> None:
        """:meth:`write`, blocking: for a sink that does more in the same worker thread.

        Raises:
            OSError: the write failed.
        """
        assert self._file is not None, "use the sink as an async context manager"
        self._file.write(data)
        self._file.flush()

    async def checkpoint(self) -> dict[str, Any]:
        """Sync what is written; the token is the file's length (and the schema, if any)."""
        assert self._file is not None, "use the sink as an async context manager"
        offset = await anyio.to_thread.run_sync(self._sync, self._file)
        if self.schema is None:
            return {"offset": offset}
        return {"offset": offset, "schema": self.schema}

    @staticmethod
    def _sync(file: IO[bytes]) -> int:
        file.flush()
        os.fsync(file.fileno())
        return file.tell()

    async def finish(self, target: Path, *, records: int) -> None:
        """Sync and close the file, then rename it to ``target`` atomically (a clean run)."""
        file, self._file = self._file, None
        if file is None:
            return
        await anyio.to_thread.run_sync(self._finish, file, target)
        self._log.info("output.complete", path=str(target), records=records)

    def _finish(self, file: IO[bytes], target: Path) -> None:
        with file:
            file.flush()
            os.fsync(file.fileno())
        replace_atomically(self.path, target)

    def close(self) -> None:
        """Close the file and keep it where it is."""
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def abort(self, *, records: int) -> None:
        """Close the file and keep it for a resume (a failed run); log ``output.incomplete``."""
        if self._file is None:
            return
        self.close()
        self._log.warning("output.incomplete", path=str(self.path), records=records)


class FileSink:
    """The life of a file sink around its :class:`AppendOnlyFile`, shared by all three.

    A subclass sets ``path``, ``partial`` (what a failed run leaves behind) and
    ``_file`` in its ``__init__``, and says how a page becomes bytes in
    :meth:`encode`; Parquet, which converts its spool at the end, overrides
    :meth:`write` and ``__aexit__`` instead.
    """

    path: Path
    partial: Path
    records: int
    _file: AppendOnlyFile

    def encode(self, page: Page) -> bytes:
        """The page as the bytes to append."""
        raise NotImplementedError

    def resume_from(self, token: Mapping[str, Any]) -> None:
        """Continue an interrupted run's file from its last checkpoint.

        Raises:
            SinkError: when the in-progress file is gone or shorter than the
                checkpoint, or was written with other columns.
        """
        self._file.resume_from(token)

    async def __aenter__(self) -> Self:
        self._file.open()
        self.records = 0
        return self

    async def checkpoint(self) -> dict[str, Any]:
        """Sync what is written; the token is the file's length (and its schema, if any)."""
        return await self._file.checkpoint()

    async def write(self, page: Page) -> None:
        """Append the page and flush it to the operating system.

        Raises:
            SinkError: a record cannot be encoded (or keyed), or the file cannot be written.
        """
        data = self.encode(page)
        with writing(self.partial, page.ref):
            await self._file.write(data)
        self.records += len(page.records)

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            await self._file.finish(self.path, records=self.records)
        else:
            self._file.abort(records=self.records)


class TableSink:
    """What the database sinks share: per-page transactions, so no checkpoint token.

    A subclass opens its connection in ``__aenter__``, writes one page's rows
    in one transaction in :meth:`_write_rows`, and closes in ``__aexit__``,
    ending with :meth:`_log_end`.
    """

    records: int
    #: the columns and key (a subclass sets its own with ``workspaces=True``)
    table_schema: TableSchema = PLAIN_SCHEMA

    def resume_from(self, token: Mapping[str, Any]) -> None:
        """Accept any checkpoint: rows are committed per page and upserts are idempotent."""

    async def checkpoint(self) -> dict[str, Any]:
        """Nothing to do: every page was committed when it was written."""
        return {}

    async def write(self, page: Page) -> None:
        """Upsert the page's rows (one per user) in one transaction.

        Raises:
            SinkError: a record cannot be keyed, or the database refused the rows
                (nothing of the page is kept then).
        """
        page_rows = dedupe(self.table_schema.rows(page), self.table_schema)
        if not page_rows:
            return
        await self._write_rows(page_rows, page)
        self.records += len(page_rows)

    async def _write_rows(self, page_rows: list[tuple[Any, ...]], page: Page) -> None:
        raise NotImplementedError

    def _log_end(self, exc_type: object, log: FilteringBoundLogger, **where: Any) -> None:
        """``output.complete``, or ``output.incomplete`` when the run failed."""
        if exc_type is not None:
            log.warning("output.incomplete", **where, records=self.records)
        else:
            log.info("output.complete", **where, records=self.records)


def check_columns(found: Sequence[str], where: str, schema: TableSchema = PLAIN_SCHEMA) -> None:
    """Refuse a table whose columns are not the schema's, in order.

    Args:
        found: the table's column names, in order.
        where: the table as messages name it, e.g. ``table 'team_stats' in stats.duckdb``.
        schema: the columns expected (plain, or with ``workspace``).

    Raises:
        SinkError: the columns differ, naming the missing and the unknown ones.
    """
    columns = schema.columns
    if list(found) != list(columns):
        missing = [c for c in columns if c not in found]
        unknown = [c for c in found if c not in columns]
        raise SinkError(
            f"{where} already exists with other columns "
            f"(missing: {', '.join(missing) or '-'}; not ours: {', '.join(unknown) or '-'}"
            "; or in another order); choose another --table, or drop that table"
        )
