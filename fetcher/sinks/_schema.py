"""The record schema every tabular sink writes: one row per (window, report, user).

CSV, Parquet, DuckDB and PostgreSQL all write the same columns, in this order:

==================  ===========  ============================================================
column              kind         from
==================  ===========  ============================================================
``window_start``    timestamp    the query's ``start`` (``page.query.start``), as sent
``window_end``      timestamp    the query's ``end``, as sent
``type``            text         the report type: ``prospect`` or ``email``
``count_by``        text         ``absolute`` or ``relative``
``user_id``         text         the record's ``userId``
``first_name``      text         ``firstName``
``last_name``       text         ``lastName``
``email``           text         ``email``
*metrics*           count        one column per metric, see :data:`METRIC_COLUMN_NAMES`
``extra``           json         every other field of the record, as a JSON object; or NULL
``fetched_at``      timestamp    when the page arrived (UTC)
==================  ===========  ============================================================

The natural key is :data:`KEY_COLUMNS`, (window_start, window_end, type,
count_by, user_id): one user's counts for one report over one window. Database
sinks upsert on it, so exporting the same window again replaces rows instead
of adding them.

With ``[[workspaces]]`` in the config, one table holds several workspaces'
rows: the schema :data:`WORKSPACE_SCHEMA` puts a ``workspace`` column (text,
the workspace's configured name) first and makes it part of the key. Without
workspaces nothing changes: :data:`PLAIN_SCHEMA` is exactly the columns
above, so existing tables and files go on as they were.

Metric columns are the union of both report types' metrics, in the reference
page's order: the prospect metrics, then the email-only ones (``email_sent``).
A metric a report type does not have is NULL in its rows, so a prospect and
an email report fit one table. Column names are snake_case, spelled out in
:data:`METRIC_COLUMN_NAMES` rather than derived by a rule, because the API's
names follow none: ``unSubscribed`` is one word (``unsubscribed``), and
reply categories are title-case phrases (``"Meeting Booked"`` ->
``meeting_booked``).

Fields fetcher does not know are kept, not dropped: a metric the API adds
later, or any other field, goes into ``extra`` as a JSON object under its
API name (NULL when a record has none). The columns therefore never change
between runs or API versions, which is what a table or a Parquet dataset
loaded run after run needs, and nothing the API sent is lost; a later
fetcher that learns the metric gives it a column. A value that does not fit
its column (a count that is not a whole number, a name that is not text) is
also kept in ``extra`` under its API name, and its column is NULL; a whole
number sent as ``3.0`` is stored as ``3``.

Timestamps: the window is the query's (the API's day boundaries in the
user's zone), kept with its offset, at the millisecond precision the API
is sent; ``fetched_at`` is UTC, to the millisecond as well, so that every
sink stores exactly the same instants.

:func:`rows` turns a page into tuples in column order; it is on the hot path
(benchmarks push 100k+ records a second through it), so it builds one tuple
per record from the record's own ``dict.get`` and checks types in bulk,
falling back to a careful per-field path only for a record that needs it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import NoneType
from typing import TYPE_CHECKING, Any, Final, Literal

import orjson

from fetcher import defaults
from fetcher.errors import ConfigError, SinkError
from fetcher.spec import EMAIL_METRICS, PROSPECT_METRICS

if TYPE_CHECKING:
    from fetcher.models import Page

__all__ = [
    "COLUMNS",
    "COLUMN_KINDS",
    "DEFAULT_TABLE",
    "IDENTITY_COLUMN_NAMES",
    "KEY_COLUMNS",
    "METRICS",
    "METRIC_COLUMNS",
    "METRIC_COLUMN_NAMES",
    "PER_PAGE_COLUMNS",
    "PLAIN_SCHEMA",
    "SCHEMA_ID",
    "USER_ID_INDEX",
    "VALUE_COLUMNS",
    "WORKSPACE_SCHEMA",
    "ColumnKind",
    "TableSchema",
    "check_table_name",
    "create_table_sql",
    "dedupe",
    "quote_ident",
    "rows",
    "schema_for",
    "upsert_tail",
]

#: The table database sinks write unless ``--table`` names another.
DEFAULT_TABLE: Final = defaults.TABLE

#: Every metric of both report types: prospect metrics, then email-only ones.
METRICS: Final[tuple[str, ...]] = PROSPECT_METRICS + tuple(
    m for m in EMAIL_METRICS if m not in PROSPECT_METRICS
)

#: API metric name -> column name. Explicit, because no rule covers
#: ``unSubscribed`` and the title-case reply categories alike.
METRIC_COLUMN_NAMES: Final[Mapping[str, str]] = {
    "prospectAdded": "prospect_added",
    "prospectContacted": "prospect_contacted",
    "opened": "opened",
    "clicked": "clicked",
    "replied": "replied",
    "unSubscribed": "unsubscribed",
    "bounced": "bounced",
    "Uncategorized": "uncategorized",
    "Interested": "interested",
    "Not Interested": "not_interested",
    "Meeting Booked": "meeting_booked",
    "Out of Office": "out_of_office",
    "Closed": "closed",
    "Not Now": "not_now",
    "Do Not Contact": "do_not_contact",
    "emailSent": "email_sent",
}

#: API identity field -> column name.
IDENTITY_COLUMN_NAMES: Final[Mapping[str, str]] = {
    "userId": "user_id",
    "firstName": "first_name",
    "lastName": "last_name",
    "email": "email",
}

#: Metric columns, in column order.
METRIC_COLUMNS: Final[tuple[str, ...]] = tuple(METRIC_COLUMN_NAMES[m] for m in METRICS)

#: Every column, in the order every tabular sink writes them.
COLUMNS: Final[tuple[str, ...]] = (
    "window_start",
    "window_end",
    "type",
    "count_by",
    *IDENTITY_COLUMN_NAMES.values(),
    *METRIC_COLUMNS,
    "extra",
    "fetched_at",
)

#: The natural key: one user's counts of one report over one window.
KEY_COLUMNS: Final[tuple[str, ...]] = ("window_start", "window_end", "type", "count_by", "user_id")

#: Columns with one value for every row of a page (:func:`rows` repeats it):
#: sinks that take columns pass them once per page, not once per row.
PER_PAGE_COLUMNS: Final = frozenset(
    {"window_start", "window_end", "type", "count_by", "fetched_at"}
)

#: The columns an upsert replaces: everything but the key.
VALUE_COLUMNS: Final[tuple[str, ...]] = tuple(c for c in COLUMNS if c not in KEY_COLUMNS)

#: Where ``user_id`` sits in a row (the key's only part that varies within a page).
USER_ID_INDEX: Final = COLUMNS.index("user_id")

ColumnKind = Literal["timestamp", "text", "count", "json"]

#: What each column holds; each sink maps a kind to its own type.
COLUMN_KINDS: Final[Mapping[str, ColumnKind]] = {
    "window_start": "timestamp",
    "window_end": "timestamp",
    "type": "text",
    "count_by": "text",
    **dict.fromkeys(IDENTITY_COLUMN_NAMES.values(), "text"),
    **dict.fromkeys(METRIC_COLUMNS, "count"),
    "extra": "json",
    "fetched_at": "timestamp",
}

#: Changes whenever the columns do; resume tokens carry it, so output written
#: under another schema is never continued.
SCHEMA_ID: Final = hashlib.sha256(",".join(COLUMNS).encode()).hexdigest()[:12]

# The record fields rows() reads, in column order (after the four query columns).
_FIELDS: Final[tuple[str, ...]] = (*IDENTITY_COLUMN_NAMES, *METRICS)
_KNOWN: Final = frozenset(_FIELDS)
_TEXT_TYPES: Final = frozenset({str, NoneType})
_COUNT_TYPES: Final = frozenset({int, NoneType})
_IDENTITY_COUNT: Final = len(IDENTITY_COLUMN_NAMES)


def _to_ms(value: dt.datetime) -> dt.datetime:
    """Drop sub-millisecond digits: the API is sent milliseconds, and Parquet stores them."""
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def rows(
    page: Page, *, timestamp: Callable[[dt.datetime], Any] | None = None
) -> list[tuple[Any, ...]]:
    """The page's records as tuples in :data:`COLUMNS` order.

    Args:
        page: the page to convert.
        timestamp: applied to the page's three timestamps (the window and
            ``fetched_at``, once per page) when a sink wants them in another
            form, e.g. ISO 8601 text; by default they stay aware datetimes.

    Returns:
        One tuple per record: NULL (``None``) for a metric the record does not
        have, ``extra`` as JSON text or ``None``.

    Raises:
        SinkError: a record has no ``userId`` (or one that is not text or a
            whole number), so it cannot be keyed; the error names the page.
    """
    query = page.query
    start, end, fetched = _to_ms(query.start), _to_ms(query.end), _to_ms(page.fetched_at)
    if timestamp is not None:
        start, end, fetched = timestamp(start), timestamp(end), timestamp(fetched)
    head = (start, end, query.type, query.count_by)
    tail = (None, fetched)
    fields, known, text_types, count_types = _FIELDS, _KNOWN, _TEXT_TYPES, _COUNT_TYPES
    out: list[tuple[Any, ...]] = []
    append = out.append
    for record in page.records:
        values = tuple(map(record.get, fields))
        # The common case, checked with set operations done in C: a text user
        # id, nothing unknown, text identities and integer (or absent) counts.
        if (
            values[0].__class__ is str
            and record.keys() <= known
            and text_types.issuperset(map(type, values[1:_IDENTITY_COUNT]))
            and count_types.issuperset(map(type, values[_IDENTITY_COUNT:]))
        ):
            append(head + values + tail)
        else:
            append(head + _careful(record, page) + (fetched,))
    return out


def _careful(record: Mapping[str, Any], page: Page) -> tuple[Any, ...]:
    """One record's values and ``extra``, field by field (unknown fields or odd values)."""
    user_id = record.get("userId")
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        user_id = str(user_id)  # a numeric id is still an id; the column is text
    elif not isinstance(user_id, str):
        found = "no userId" if user_id is None else f"userId {user_id!r}"
        keys = ", ".join(list(map(str, record))[:8])
        raise SinkError(
            f"a record has {found} (fields: {keys}), so it cannot be keyed in a table; "
            "write it with the JSON Lines sink (--out NAME.jsonl) instead",
            page=page.ref,
        )
    values: list[Any] = [user_id]
    misfits: set[str] = set()
    for field in _FIELDS[1:_IDENTITY_COUNT]:
        value = record.get(field)
        if value is None or isinstance(value, str):
            values.append(value)
        else:
            values.append(None)
            misfits.add(field)
    for field in METRICS:
        value = record.get(field)
        if value is None or value.__class__ is int:
            values.append(value)
        elif isinstance(value, float) and value.is_integer():
            values.append(int(value))
        else:
            values.append(None)
            misfits.add(field)
    known = _KNOWN
    extra = {k: v for k, v in record.items() if k not in known or k in misfits}
    values.append(orjson.dumps(extra).decode() if extra else None)
    return tuple(values)


_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def check_table_name(name: str) -> str:
    """Check a table name given with ``--table``.

    Args:
        name: the name: a letter or underscore, then letters, digits and
            underscores, at most 63 characters (PostgreSQL's limit). It is
            used exactly as given (quoted), so case matters.

    Returns:
        The name.

    Raises:
        ConfigError: naming ``--table``, when the name is not such an identifier.
    """
    if not _IDENTIFIER.fullmatch(name):
        raise ConfigError(
            f"table name {name!r} is not a plain identifier: use letters, digits and "
            "underscores, starting with a letter or underscore, at most 63 characters "
            "(e.g. team_stats)",
            field="--table",
        )
    return name


def quote_ident(name: str) -> str:
    """Quote an identifier for SQL (names are checked first; this guards keywords)."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class TableSchema:
    """The columns one table or file holds, and its natural key.

    Attributes:
        columns: every column, in order.
        key: the natural key (what an upsert replaces on).
        kinds: what each column holds.
        per_page: columns with one value for every row of a page.
        schema_id: changes whenever the columns do (resume tokens carry it).
        workspace: whether rows start with the query's ``workspace``.
    """

    columns: tuple[str, ...]
    key: tuple[str, ...]
    kinds: Mapping[str, ColumnKind]
    per_page: frozenset[str]
    schema_id: str
    workspace: bool

    @classmethod
    def of(cls, *, workspace: bool) -> TableSchema:
        """The plain schema, or the one with a leading ``workspace`` column in the key."""
        lead: tuple[str, ...] = ("workspace",) if workspace else ()
        columns = (*lead, *COLUMNS)
        return cls(
            columns=columns,
            key=(*lead, *KEY_COLUMNS),
            kinds={**dict.fromkeys(lead, "text"), **COLUMN_KINDS},
            per_page=PER_PAGE_COLUMNS | frozenset(lead),
            schema_id=(
                hashlib.sha256(",".join(columns).encode()).hexdigest()[:12]
                if workspace
                else SCHEMA_ID
            ),
            workspace=workspace,
        )

    @property
    def value_columns(self) -> tuple[str, ...]:
        """The columns an upsert replaces: everything but the key."""
        return tuple(c for c in self.columns if c not in self.key)

    @property
    def user_id_index(self) -> int:
        """Where ``user_id`` sits in a row."""
        return self.columns.index("user_id")

    def rows(
        self, page: Page, *, timestamp: Callable[[dt.datetime], Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """:func:`rows`, with the query's workspace first when the schema has one.

        Raises:
            SinkError: as :func:`rows`; or a page without a workspace for a
                table keyed on one.
        """
        page_rows = rows(page, timestamp=timestamp)
        if not self.workspace:
            return page_rows
        workspace = page.query.workspace
        if workspace is None:
            raise SinkError(
                "this output is keyed on the workspace, but the page's query names none; "
                "give every query a workspace (set [[workspaces]] in the config)",
                page=page.ref,
            )
        head = (workspace,)
        return [head + row for row in page_rows]


#: The schema without workspaces: exactly :data:`COLUMNS`.
PLAIN_SCHEMA: Final = TableSchema.of(workspace=False)
#: The schema with ``[[workspaces]]``: ``workspace`` first, and in the key.
WORKSPACE_SCHEMA: Final = TableSchema.of(workspace=True)


def schema_for(workspaces: bool) -> TableSchema:
    """:data:`WORKSPACE_SCHEMA` when rows carry workspaces, else :data:`PLAIN_SCHEMA`."""
    return WORKSPACE_SCHEMA if workspaces else PLAIN_SCHEMA


def create_table_sql(
    table: str, types: Mapping[ColumnKind, str], schema: TableSchema = PLAIN_SCHEMA
) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for the schema, keyed on its natural key.

    Args:
        table: a name that passed :func:`check_table_name`.
        types: the database's type for each :data:`ColumnKind`.
        schema: the columns (plain, or with ``workspace``).
    """
    columns = [f"{quote_ident(c)} {types[schema.kinds[c]]}" for c in schema.columns]
    columns += [f"PRIMARY KEY ({', '.join(map(quote_ident, schema.key))})"]
    body = ",\n    ".join(columns)
    return f"CREATE TABLE IF NOT EXISTS {quote_ident(table)} (\n    {body}\n)"


def upsert_tail(schema: TableSchema = PLAIN_SCHEMA) -> str:
    """The ``ON CONFLICT`` clause both databases share: the key's row is replaced."""
    updates = ", ".join(
        f"{quote_ident(c)} = excluded.{quote_ident(c)}" for c in schema.value_columns
    )
    return f"ON CONFLICT ({', '.join(map(quote_ident, schema.key))}) DO UPDATE SET {updates}"


def dedupe(
    page_rows: list[tuple[Any, ...]], schema: TableSchema = PLAIN_SCHEMA
) -> list[tuple[Any, ...]]:
    """The rows with one per key, the last one winning (a page lists a user twice).

    An upsert may touch a key only once per statement, and the rows of one page
    differ in their key only by ``user_id``.
    """
    index = schema.user_id_index
    if len({row[index] for row in page_rows}) == len(page_rows):
        return page_rows
    return list({row[index]: row for row in page_rows}.values())
