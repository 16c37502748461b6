"""The PostgreSQL sink: the tabular schema upserted into a table, through asyncpg.

It behaves like the DuckDB sink (:mod:`fetcher.sinks.duckdb`) against a server:
on entry, before any request, it connects, creates the table if it is missing
(``timestamptz`` windows and ``fetched_at``, ``bigint`` counts, ``text``, and
``jsonb`` for ``extra`` so that ``extra->>'newMetric'`` works; a ``PRIMARY
KEY`` on the natural key), checks that an existing table has exactly the
schema's columns, and prepares the upsert (so a table without the key fails
then, not at the first page). Each page is then written in **one
transaction**: an ``executemany`` of ``INSERT ... ON CONFLICT (key) DO
UPDATE``, which asyncpg pipelines in a single round trip. A page is in the
table entirely or not at all; running the same window again replaces its rows;
a failed run keeps the pages it committed and another run completes them. A
checkpoint therefore needs no token (``{}``), and a resume no preparation.

asyncpg is async, so nothing here blocks the event loop.

The connection string (``FETCHER_POSTGRES_DSN``, or ``postgres_dsn`` in the
config file) is a secret: the sink keeps it as a :class:`pydantic.SecretStr`,
and every message it builds (errors, ``repr``, log events) shows the target
with the password replaced by ``***`` (see :func:`redact`). asyncpg's own
exceptions are caught and re-raised as :class:`~fetcher.errors.SinkError`
with a redacted message and without the original chained, so no traceback
carries the string either.

asyncpg is an optional dependency (``pip install 'fetcher[postgres]'``),
imported only when a PostgreSQL sink is made.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Self
from urllib.parse import parse_qs, unquote, urlsplit

import structlog
from pydantic import SecretStr

from fetcher.errors import REDACTED, ConfigError, SinkError
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
    import asyncpg

    from fetcher.models import Page

__all__ = [
    "POSTGRES_TYPES",
    "PostgresSink",
    "describe_dsn",
    "dsn_secrets",
    "prepare_table",
    "redact",
    "upsert_sql",
]

log = structlog.get_logger("fetcher.sinks.postgres")

#: PostgreSQL's type for each kind of column.
POSTGRES_TYPES: Final[Mapping[ColumnKind, str]] = {
    "timestamp": "timestamptz",
    "text": "text",
    "count": "bigint",
    "json": "jsonb",
}

#: Seconds to wait for the server when connecting.
DEFAULT_CONNECT_TIMEOUT_S: Final = 10.0

# user:PASSWORD@ in a URL, and password=... in a query string or key=value DSN.
_URL_PASSWORD: Final = re.compile(r"(?P<head>://[^:/@\s]*:)[^@\s]*(?=@)")
_KV_PASSWORD: Final = re.compile(r"(?P<head>password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s&]+)", re.I)


def dsn_secrets(dsn: str) -> list[str]:
    """The passwords in a connection string, as written and decoded.

    Give them to the log redaction (:class:`fetcher.app.logs.RedactSecrets`).
    """
    found: list[str] = []
    try:
        parts = urlsplit(dsn)
        if parts.password:
            found.append(parts.password)
        found += parse_qs(parts.query).get("password", [])
    except ValueError:
        pass  # not a URL; the key=value pattern below still applies
    found += [m.group(0)[len(m.group("head")) :].strip("'") for m in _KV_PASSWORD.finditer(dsn)]
    secrets = {s for s in found if s} | {unquote(s) for s in found if s}
    return sorted(secrets, key=len, reverse=True)


def redact(text: str, dsn: str | None = None) -> str:
    """``text`` with every password replaced by ``***``.

    Args:
        text: a message that may contain a connection string.
        dsn: the connection string in use; its password is removed wherever
            it appears, even outside a URL.
    """
    for secret in dsn_secrets(dsn) if dsn else ():
        text = text.replace(secret, REDACTED)
    text = _URL_PASSWORD.sub(rf"\g<head>{REDACTED}", text)
    return _KV_PASSWORD.sub(rf"\g<head>{REDACTED}", text)


def upsert_sql(table: str, schema: TableSchema = PLAIN_SCHEMA) -> str:
    """One row's upsert; ``executemany`` runs it for every row of a page."""
    names = ", ".join(map(quote_ident, schema.columns))
    values = ", ".join(f"${n}" for n in range(1, len(schema.columns) + 1))
    tail = upsert_tail(schema)
    # The table name is checked (an identifier) and quoted; values are parameters.
    return f"INSERT INTO {quote_ident(table)} ({names}) VALUES ({values}) {tail}"  # noqa: S608


def describe_dsn(dsn: str) -> str:
    """Where a connection string points, safe to show: ``postgresql://user:***@host:5432/db``.

    Built from the URL's parts, so no password survives, however it is spelt;
    the query (options such as ``sslmode``) is left out.
    """
    try:
        parts = urlsplit(dsn)
    except ValueError:
        parts = None
    if parts is None or not parts.scheme or not parts.netloc:
        return redact(dsn, dsn)  # a key=value string: remove what we can find
    user = parts.username or ""
    if parts.password is not None:
        user = f"{user}:{REDACTED}"
    where = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{user + '@' if user else ''}{where}{parts.path}"


async def prepare_table(
    connection: asyncpg.Connection[Any], table: str, schema: TableSchema, where: str
) -> None:
    """Create the table if it is missing, and refuse one with other columns.

    Raises:
        SinkError: the table has other columns (see :func:`check_columns`).
        asyncpg.PostgresError: the server refused (the caller says where).
    """
    await connection.execute(create_table_sql(table, POSTGRES_TYPES, schema))
    found = [
        record["column_name"]
        for record in await connection.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = $1 "
            "ORDER BY ordinal_position",
            table,
        )
    ]
    check_columns(found, where, schema)


def _require_asyncpg() -> None:
    try:
        import asyncpg  # noqa: F401, PLC0415  (optional; only checked here)
    except ImportError:
        raise ConfigError(
            "PostgreSQL output needs asyncpg, which is not installed: "
            "pip install 'fetcher[postgres]'",
            field="--sink",
        ) from None


class PostgresSink(TableSink):
    """Upserts every record into ``table`` of a PostgreSQL database.

    Args:
        dsn: a connection string, e.g. ``postgresql://user:password@host:5432/db``.
        table: the table; created if missing. Letters, digits and underscores.
        connect_timeout: seconds to wait for the server.
        workspaces: rows start with a ``workspace`` column, part of the key
            (``[[workspaces]]``).

    Raises:
        ConfigError: asyncpg is not installed, or the table name is not a plain
            identifier (names ``--table``).
    """

    def __init__(
        self,
        dsn: str | SecretStr,
        table: str = DEFAULT_TABLE,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        workspaces: bool = False,
    ) -> None:
        _require_asyncpg()
        self.table_schema = schema_for(workspaces)
        self._dsn = dsn if isinstance(dsn, SecretStr) else SecretStr(dsn)
        self.table = check_table_name(table)
        self.connect_timeout = connect_timeout
        #: where the sink writes, password redacted: safe to show.
        self.target = describe_dsn(self._dsn.get_secret_value())
        self.records = 0
        self._connection: asyncpg.Connection[Any] | None = None
        self._sql = upsert_sql(self.table, self.table_schema)

    def __repr__(self) -> str:
        return f"PostgresSink({self.target!r}, table={self.table!r})"

    @property
    def secrets(self) -> list[str]:
        """The connection string's passwords, for the log redaction."""
        return dsn_secrets(self._dsn.get_secret_value())

    def _redact(self, text: str) -> str:
        return redact(text, self._dsn.get_secret_value())

    def _error(self, what: str, exc: BaseException) -> str:
        return self._redact(f"{what}: {type(exc).__name__}: {exc}")

    async def __aenter__(self) -> Self:
        import asyncpg  # noqa: PLC0415  (optional dependency)

        try:
            connection = await asyncpg.connect(
                self._dsn.get_secret_value(), timeout=self.connect_timeout
            )
        except Exception as exc:  # any failure here means "cannot connect"
            # No `from exc`: the original may quote the connection string.
            raise SinkError(
                self._error(f"cannot connect to PostgreSQL at {self.target}", exc)
                + "; check FETCHER_POSTGRES_DSN (or postgres_dsn in the config) "
                "and that the server is running"
            ) from None
        try:
            await self._prepare(connection)
        except BaseException:
            connection.terminate()
            raise
        self._connection = connection
        self.records = 0
        return self

    async def _prepare(self, connection: asyncpg.Connection[Any]) -> None:
        import asyncpg  # noqa: PLC0415

        where = f"table {self.table!r} at {self.target}"
        try:
            await prepare_table(connection, self.table, self.table_schema, where)
            # Preparing checks the ON CONFLICT target: a table without the key fails now.
            await connection.prepare(self._sql)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise SinkError(
                self._error(f"cannot use {where}", exc)
                + "; choose another --table, or check the user's rights"
            ) from None

    async def _write_rows(self, page_rows: list[tuple[Any, ...]], page: Page) -> None:
        import asyncpg  # noqa: PLC0415

        connection = self._connection
        assert connection is not None, "use the sink as an async context manager"
        try:
            async with connection.transaction():
                await connection.executemany(self._sql, page_rows)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise SinkError(
                self._error(f"PostgreSQL could not write to table {self.table!r}", exc),
                page=page.ref,
            ) from None

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        import asyncpg  # noqa: PLC0415

        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            await connection.close(timeout=self.connect_timeout)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
            connection.terminate()  # committed pages are safe; just let go
        self._log_end(exc_type, log, target=self.target, table=self.table)
