"""Pick and make a sink from what the user asked for: ``--out``, ``--sink``, ``--table``.

``--out``'s extension picks the format, so ``--out stats.csv`` needs nothing
else; ``--sink`` names it outright and wins over the extension (``--sink
duckdb --out warehouse.data``). PostgreSQL has no file: ``--sink postgres``
takes its connection string from ``FETCHER_POSTGRES_DSN`` or ``postgres_dsn``
in the config file, and ignores ``--out``. Database sinks write the table
``team_stats`` unless ``--table`` names another.

Everything is checked here, before any request: an unknown extension or
sink, a missing path or connection string, a bad table name, a missing
optional dependency (pyarrow, asyncpg) each raise
:class:`~fetcher.errors.ConfigError` naming the flag to fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

from pydantic import SecretStr

from fetcher.errors import ConfigError
from fetcher.sinks._schema import DEFAULT_TABLE
from fetcher.sinks.csv import CsvSink
from fetcher.sinks.duckdb import DuckDBSink
from fetcher.sinks.jsonl import JsonlSink
from fetcher.sinks.parquet import ParquetSink
from fetcher.sinks.postgres import PostgresSink

if TYPE_CHECKING:
    from fetcher.sinks._protocol import Sink

__all__ = ["EXTENSIONS", "SINK_KINDS", "make_sink", "sink_kind"]

#: File extension (lower case) -> sink kind.
EXTENSIONS: Final = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".duckdb": "duckdb",
    ".db": "duckdb",
}

#: Every sink kind ``--sink`` accepts.
SINK_KINDS: Final = ("jsonl", "csv", "parquet", "duckdb", "postgres")


def sink_kind(out: Path | None, sink: str | None = None) -> str:
    """The kind of sink for ``--out`` and ``--sink``.

    Args:
        out: the output path, if any.
        sink: the sink asked for by name, if any; wins over the extension.

    Raises:
        ConfigError: the name is unknown (``--sink``), or there is no name
            and the extension is unknown or missing (``--out``).
    """
    if sink is not None:
        kind = sink.strip().lower()
        if kind not in SINK_KINDS:
            raise ConfigError(
                f"unknown sink {sink!r}; use one of: {', '.join(SINK_KINDS)}", field="--sink"
            )
        return kind
    if out is None:
        raise ConfigError(
            "required: the file to write, e.g. --out stats.jsonl (or --sink postgres)",
            field="--out",
        )
    kind_for_ext = EXTENSIONS.get(out.suffix.lower())
    if kind_for_ext is None:
        supported = ", ".join(EXTENSIONS)
        raise ConfigError(
            f"cannot tell the format of {str(out)!r} from its extension; use one of "
            f"{supported}, or name the format with --sink (e.g. --sink duckdb)",
            field="--out",
        )
    return kind_for_ext


def make_sink(
    out: Path | None,
    *,
    sink: str | None = None,
    table: str = DEFAULT_TABLE,
    postgres_dsn: str | SecretStr | None = None,
    workspaces: bool = False,
) -> Sink:
    """Make the sink the user asked for.

    Args:
        out: the output path (``--out``); not needed for PostgreSQL.
        sink: the sink by name (``--sink``): jsonl, csv, parquet, duckdb or
            postgres; by default the extension of ``out`` decides
            (.jsonl/.ndjson, .csv, .parquet, .duckdb/.db).
        table: the table of database sinks (``--table``).
        postgres_dsn: the PostgreSQL connection string.
        workspaces: rows carry their workspace (``[[workspaces]]``): a
            ``workspace`` column, part of the key (JSONL: ``_workspace``).

    Returns:
        A sink, not yet entered.

    Raises:
        ConfigError: naming the flag to fix (see the module docstring).
    """
    kind = sink_kind(out, sink)
    if kind == "postgres":
        dsn = postgres_dsn if isinstance(postgres_dsn, SecretStr) else SecretStr(postgres_dsn or "")
        if not dsn.get_secret_value().strip():
            raise ConfigError(
                "PostgreSQL needs a connection string: set FETCHER_POSTGRES_DSN, or "
                "postgres_dsn in the config file (e.g. postgresql://user@localhost:5432/db)",
                field="postgres_dsn",
            )
        return PostgresSink(dsn, table=table, workspaces=workspaces)
    if out is None:
        raise ConfigError(f"required: the file to write, e.g. --out stats.{kind}", field="--out")
    if kind == "jsonl":
        return JsonlSink(out)
    if kind == "csv":
        return CsvSink(out, workspaces=workspaces)
    if kind == "parquet":
        return ParquetSink(out, workspaces=workspaces)
    return DuckDBSink(out, table=table, workspaces=workspaces)
