"""The DuckDB sink: the tabular schema upserted into a table of an embedded database file.

DuckDB is the default database: one file, no server, and SQL over it straight
away (``duckdb stats.duckdb -c "select * from team_stats"``). The sink opens
(or creates) the file, creates the table if it is missing (columns and types
from :mod:`fetcher.sinks._schema`: ``TIMESTAMPTZ`` windows and
``fetched_at``, ``BIGINT`` counts, ``VARCHAR`` text, ``JSON`` for
``extra``, and a ``PRIMARY KEY`` on the natural key), and checks that an
existing table has exactly those columns, all before the first request.

Each page is upserted in **one transaction**: ``INSERT ... ON CONFLICT (key)
DO UPDATE`` replaces the row of a (window, type, count_by, user) already
there. Exporting the same window again therefore replaces its rows and never
duplicates them, and a run that stopped part-way, run again, fills in what is
missing. Unlike the file sinks, the output is not a partial file renamed at
the end: every page is committed as it is written, so a failed run leaves the
pages it wrote in the table (complete pages only, never part of one), and
another run of the same export completes it. For the same reason a
checkpoint needs no token (:meth:`DuckDBSink.checkpoint` returns ``{}``) and
a resume needs no preparation: pages written after the last checkpoint are
fetched again and upserted over themselves.

The rows of a page go to DuckDB as one list per column, unnested in a single
``INSERT ... SELECT``: DuckDB binds a handful of lists far faster than a
thousand rows of parameters (``executemany`` costs seconds per thousand rows).

Each page is one statement and one commit, and in DuckDB a statement has a
fixed cost that dwarfs a small page's rows: planning alone is about 3 ms for
the upsert, which DuckDB rewrites into a ``MERGE`` (a join against the table
and a grouping); the commit is about 0.3 ms. So the sink first tries a plain
``INSERT`` (about 2.5x cheaper): a fresh window's keys are new. If a key is
there already (a re-run, a resumed run) DuckDB refuses the whole statement,
the transaction is rolled back, and that page and every later one is upserted
instead; the table ends the same either way. The connection runs DuckDB with
one thread: one writer of small transactions gains nothing from parallel
plans, whose threads would compete with the fetch for the CPU.

Every :data:`REOPEN_AFTER_PAGES` pages (or :data:`REOPEN_AFTER_ROWS` rows) the
sink closes the file and opens it again: an open database holds on to memory
as a long run goes on, and closing (a checkpoint) gives it back; the peak of a
20,000-page run stays flat instead of rising with the table.

DuckDB's Python API blocks, so every call runs off the event loop, on **one
thread** the sink owns for as long as it is open (a single-worker executor,
awaited through :func:`anyio.to_thread.run_sync`). One thread, not whichever of
anyio's worker threads is free: the sink holds one connection, which must not be
used from two threads at once, and DuckDB's allocator keeps memory per thread, so
calls spread over several threads held more of it (20,000 pages, measured alone:
a peak of 142 MB from four threads against 128 MB from one). The file is locked
by DuckDB while the sink is open; a second program holding it makes the sink
fail on entry, before any request, and so does a second sink (or connection) on
the same file in this program: the file is attached to the sink's own in-memory
connection, not shared through DuckDB's per-process instance cache.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

import anyio
import structlog

from fetcher.errors import SinkError
from fetcher.sinks._common import TableSink, check_columns
from fetcher.sinks._schema import (
    DEFAULT_TABLE,
    PLAIN_SCHEMA,
    ColumnKind,
    TableSchema,
    check_table_name,
    create_table_sql,
    quote_ident,
    schema_for,
    upsert_tail,
)

if TYPE_CHECKING:
    import duckdb

    from fetcher.models import Page

__all__ = ["DUCKDB_TYPES", "DuckDBSink"]

log = structlog.get_logger("fetcher.sinks.duckdb")

T = TypeVar("T")

#: DuckDB's type for each kind of column.
DUCKDB_TYPES: Final[Mapping[ColumnKind, str]] = {
    "timestamp": "TIMESTAMPTZ",
    "text": "VARCHAR",
    "count": "BIGINT",
    "json": "JSON",
}

#: How much write-ahead log DuckDB gathers before it checkpoints it into the file
#: (DuckDB's default is 16 MB). A checkpoint's memory grows with the table and its
#: key index; smaller, more frequent checkpoints keep a long run's peak lower
#: (20,000 pages: 161 -> 146 MB measured, at no measurable cost in time).
CHECKPOINT_THRESHOLD: Final = "1MB"

#: Rows per row group in the file (DuckDB's default is 122,880). When a row group
#: fills, its checkpoint compresses every column of it at once, a transient
#: buffer of about 1 MB per column at the default size: a 25 MB step in the
#: writer's peak once a table passes 122,880 rows (20,000 ten-row pages: 147 MB
#: peak against 124 MB at 8,192, measured alone; no cost in time measured).
#: Smaller groups also give finer zone maps to queries filtering on the window.
ROW_GROUP_SIZE: Final = 8192

#: Pages, and rows, written on one connection before the sink closes and reopens
#: the file. An open DuckDB database holds on to memory as it goes, beyond what it
#: accounts for (its key index, cached table blocks, and allocator fragmentation
#: from thousands of planned statements: this DuckDB build uses glibc's malloc);
#: closing gives it back. 20,000 ten-row pages, the CLI's peak (VmHWM): 146 MiB
#: and rising without reopening; 138-141 MiB reopening every 250 pages; 130-133
#: MiB every 100 (and 134 every 50), at no measurable cost in time: a reopen is a
#: checkpoint and an ATTACH, a few milliseconds against 100 pages' 400.
REOPEN_AFTER_PAGES: Final = 100
REOPEN_AFTER_ROWS: Final = 100_000

#: The name the database file is attached under in the sink's connection.
_ALIAS: Final = "fetcher_out"


def _upsert_sql(table: str, schema: TableSchema = PLAIN_SCHEMA) -> str:
    """One page's upsert: per-page values as scalars, the others unnested from lists."""
    select = []
    for number, column in enumerate(schema.columns, start=1):
        sql_type = DUCKDB_TYPES[schema.kinds[column]]
        if column in schema.per_page:
            select.append(f"${number}::{sql_type}")
        else:
            select.append(f"unnest(${number}::{sql_type}[])")
    names = ", ".join(map(quote_ident, schema.columns))
    tail = upsert_tail(schema)
    return f"INSERT INTO {quote_ident(table)} ({names}) SELECT {', '.join(select)} {tail}"


def _insert_sql(table: str, schema: TableSchema = PLAIN_SCHEMA) -> str:
    """:func:`_upsert_sql` without its ``ON CONFLICT`` clause: for keys not in the table."""
    return _upsert_sql(table, schema).partition(" ON CONFLICT ")[0]


def _in_transaction(connection: duckdb.DuckDBPyConnection, sql: str, parameters: Any) -> None:
    """Run ``sql`` in a transaction of its own; roll it back if anything fails."""
    import duckdb  # noqa: PLC0415

    connection.begin()
    try:
        connection.execute(sql, parameters)
        connection.commit()
    except BaseException:
        # The transaction may be gone already; the caller's error says why.
        with contextlib.suppress(duckdb.Error):
            connection.rollback()
        raise


def _parameters(page_rows: list[tuple[Any, ...]], schema: TableSchema) -> list[Any]:
    """The upsert's parameters: the first row's per-page values, lists for the rest."""
    columns = list(zip(*page_rows, strict=True))
    first = page_rows[0]
    per_page = schema.per_page
    return [
        first[i] if name in per_page else list(columns[i]) for i, name in enumerate(schema.columns)
    ]


class DuckDBSink(TableSink):
    """Upserts every record into ``table`` of the DuckDB database file ``path``.

    Args:
        path: the database file; created (with its directory) if missing.
        table: the table; created if missing. Letters, digits and underscores.
        workspaces: rows start with a ``workspace`` column, part of the key
            (``[[workspaces]]``).

    Raises:
        ConfigError: the table name is not a plain identifier (names ``--table``).
    """

    def __init__(
        self, path: str | os.PathLike[str], table: str = DEFAULT_TABLE, *, workspaces: bool = False
    ) -> None:
        self.path = Path(path)
        self.table = check_table_name(table)
        self.table_schema = schema_for(workspaces)
        self.records = 0
        self._connection: duckdb.DuckDBPyConnection | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._sql = _upsert_sql(self.table, self.table_schema)
        self._insert_sql = _insert_sql(self.table, self.table_schema)
        # Set at the first key already in the table: from then on, pages are upserted.
        self._upserting = False
        # Written on the current connection (see REOPEN_AFTER_PAGES).
        self._pages_open = 0
        self._rows_open = 0
        #: How many times the sink closed and reopened its file to give memory back.
        self.reopens = 0

    def __repr__(self) -> str:
        return f"DuckDBSink({str(self.path)!r}, table={self.table!r})"

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func`` on the sink's own thread, and wait for it without blocking the loop.

        The call is handed to that thread from an anyio worker thread, not from
        the loop: a task cancelled before its turn hands nothing over, and one
        cancelled while its call runs waits for it (and gets its result), so no
        call runs unseen, such as an ``_open`` whose connection nobody closes.
        """
        thread, limiter = self._thread, self._limiter
        assert thread is not None, "use the sink as an async context manager"
        assert limiter is not None
        return await anyio.to_thread.run_sync(
            lambda: thread.submit(func, *args).result(), limiter=limiter
        )

    async def __aenter__(self) -> Self:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="fetcher-duckdb")
        self._limiter = anyio.CapacityLimiter(1)
        try:
            self._connection = await self._run(self._open)
        except BaseException:
            self._thread.shutdown(wait=False)  # nothing runs on it: see _run
            self._thread = None
            raise
        self.records = 0
        self._upserting = False
        self._pages_open = self._rows_open = 0
        return self

    def _open(self) -> duckdb.DuckDBPyConnection:
        import duckdb  # noqa: PLC0415  (a heavy import, needed only here)

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        # The file is attached to an in-memory connection, because the row
        # group size is an option of ATTACH, not of connect().
        connection = duckdb.connect()
        try:
            try:
                path = str(self.path).replace("'", "''")
                connection.execute(f"ATTACH '{path}' AS {_ALIAS} (ROW_GROUP_SIZE {ROW_GROUP_SIZE})")
                connection.execute(f"USE {_ALIAS}")
            except duckdb.Error as exc:
                hint = ""
                if "lock" in str(exc):
                    hint = " (another program has it open; close that first)"
                elif "handle conflict" in str(exc):
                    hint = " (this program has it open already, e.g. in another sink; close that)"
                raise SinkError(
                    f"cannot open the DuckDB database {self.path}: {exc}{hint}"
                ) from exc
            self._prepare(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def _prepare(self, connection: duckdb.DuckDBPyConnection) -> None:
        import duckdb  # noqa: PLC0415

        try:
            connection.execute("SET threads = 1")
            connection.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
            connection.execute(create_table_sql(self.table, DUCKDB_TYPES, self.table_schema))
            self._check_table(connection)
            # Bind the upsert once with no rows: a table without the key
            # fails here, before any request, instead of at the first page.
            schema = self.table_schema
            connection.execute(
                self._sql, [None if n in schema.per_page else [] for n in schema.columns]
            )
        except duckdb.Error as exc:
            raise SinkError(
                f"cannot use table {self.table!r} in {self.path}: {exc}; "
                "choose another --table, or drop that table"
            ) from exc

    def _check_table(self, connection: duckdb.DuckDBPyConnection) -> None:
        found = [
            name
            for (name,) in connection.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE lower(table_name) = lower(?) AND table_schema = current_schema() "
                "AND table_catalog = current_database() "
                "ORDER BY ordinal_position",
                [self.table],
            ).fetchall()
        ]
        check_columns(found, f"table {self.table!r} in {self.path}", self.table_schema)

    async def _write_rows(self, page_rows: list[tuple[Any, ...]], page: Page) -> None:
        await self._run(self._upsert, page_rows, page)

    def _upsert(self, page_rows: list[tuple[Any, ...]], page: Page) -> None:
        import duckdb  # noqa: PLC0415

        if self._pages_open >= REOPEN_AFTER_PAGES or self._rows_open >= REOPEN_AFTER_ROWS:
            self._reopen(page)
        connection = self._connection
        assert connection is not None, "use the sink as an async context manager"
        parameters = _parameters(page_rows, self.table_schema)
        self._pages_open += 1
        self._rows_open += len(page_rows)
        try:
            if not self._upserting:
                try:
                    _in_transaction(connection, self._insert_sql, parameters)
                except duckdb.ConstraintException:
                    self._upserting = True  # some keys are there already
                else:
                    return
            _in_transaction(connection, self._sql, parameters)
        except duckdb.Error as exc:
            raise SinkError(
                f"DuckDB could not write to table {self.table!r} in {self.path}: {exc}",
                page=page.ref,
            ) from exc

    def _reopen(self, page: Page) -> None:
        """Close the file (a checkpoint) and open it again: the memory DuckDB held goes back.

        Between the two, for a few milliseconds, the file is not locked; a program
        that opens it then makes this fail, naming the page not written (the pages
        before it are committed, and another run completes the export).
        """
        import duckdb  # noqa: PLC0415

        connection, self._connection = self._connection, None
        assert connection is not None, "use the sink as an async context manager"
        try:
            connection.close()
            self._connection = self._open()
        except duckdb.Error as exc:  # the close's checkpoint
            raise SinkError(
                f"DuckDB could not checkpoint {self.path}: {exc}", page=page.ref
            ) from exc
        except SinkError as exc:
            raise SinkError(str(exc), page=page.ref) from exc
        self._pages_open = self._rows_open = 0
        self.reopens += 1

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        # Committed pages stay whatever happened; closing also checkpoints
        # DuckDB's write-ahead log into the file.
        try:
            # Shielded: a cancelled run still closes, and so checkpoints, its file.
            with anyio.CancelScope(shield=True):
                await self._run(connection.close)
        finally:
            thread, self._thread = self._thread, None
            if thread is not None:
                thread.shutdown(wait=False)  # idle now: its thread ends at once
        self._log_end(exc_type, log, path=str(self.path), table=self.table)
