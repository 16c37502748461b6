"""The ledger: where a distributed job stands, in PostgreSQL, beside its results.

Four tables in the schema ``fetcher`` (created on first use), readable by any
SQL client:

``fetcher.jobs``
    one row per job: ``job_id``, ``results_table`` (the results' table, in the
    connection's schema), ``workspaces`` (whether rows carry one),
    ``settings`` (the job's settings as JSON: never a key, never the
    connection string), ``units``, ``created_at``, ``updated_at``.
``fetcher.units``
    one row per unit (``job_id``, ``unit_id``): its ``workspace``,
    ``window_start``, ``window_end``, ``type``, ``user_batch``, the query
    (``spec``); its ``state`` (``queued``, ``running``, ``done``, ``failed``),
    ``deliveries`` (times a worker took it), ``failures`` (failed attempts since
    it was last enqueued), ``total_pages``/``total_items``/``last_page`` (what
    page 1 said), ``worker``, ``error``, and when it was enqueued, started,
    finished and updated.
``fetcher.page_checkpoints``
    one row per page written (``job_id``, ``unit_id``, ``page``): ``repair``
    (a re-read of missing users), ``records``, ``rows`` (records the page held,
    repeats included), ``users`` (the user ids it wrote), ``committed_at``. A
    page's checkpoint commits **in the same transaction** as its rows in the
    results table: a page is in both or in neither.
``fetcher.errors``
    every failed attempt: ``job_id``, ``unit_id``, ``at``, ``worker``,
    ``kind`` (the error's class), ``error`` (its message, never a key), and
    ``final`` (the unit was failed for good).

Transitions: :meth:`Ledger.record_job` inserts a job's units as ``queued``
(again: nothing changes); :meth:`Ledger.to_send` marks every unit not done as
``queued`` and lists them; :meth:`Ledger.claim` takes a ``queued`` or
``running`` unit (a redelivery) and makes it ``running``, or says it is done
or failed already, so a duplicate delivery changes nothing;
:meth:`Ledger.finish`, :meth:`Ledger.fail` and :meth:`Ledger.requeue` end an
attempt. Only one worker works a unit at a time: :meth:`Ledger.claim` takes a
session advisory lock on the unit, released when that worker's connection
ends, however it ends.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, Self

import structlog
from pydantic import SecretStr

from fetcher.distributed.units import Unit
from fetcher.errors import ConfigError, SinkError
from fetcher.run.paging import Resume
from fetcher.sinks._schema import TableSchema, dedupe, quote_ident
from fetcher.sinks.postgres import describe_dsn, prepare_table, redact, upsert_sql

if TYPE_CHECKING:
    import asyncpg

    from fetcher.models import Page
    from fetcher.run.paging import QueryPlan

__all__ = ["LEDGER_SCHEMA", "JobStatus", "Ledger", "UnitState"]

log = structlog.get_logger("fetcher.distributed.ledger")

#: The ledger's schema (a public contract: ``fetcher status`` and SQL clients read it).
LEDGER_SCHEMA: Final = "fetcher"

UnitState = Literal["queued", "running", "done", "failed"]
UNIT_STATES: Final[tuple[str, ...]] = ("done", "running", "queued", "failed")


def _ddl(schema: str) -> list[str]:
    s = quote_ident(schema)
    return [
        f"CREATE SCHEMA IF NOT EXISTS {s}",
        f"""CREATE TABLE IF NOT EXISTS {s}.jobs (
            job_id text PRIMARY KEY,
            results_table text NOT NULL,
            workspaces boolean NOT NULL,
            settings jsonb NOT NULL,
            units integer NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )""",
        f"""CREATE TABLE IF NOT EXISTS {s}.units (
            job_id text NOT NULL REFERENCES {s}.jobs ON DELETE CASCADE,
            unit_id text NOT NULL,
            workspace text,
            window_start timestamptz NOT NULL,
            window_end timestamptz NOT NULL,
            type text NOT NULL,
            user_batch integer NOT NULL,
            spec jsonb NOT NULL,
            state text NOT NULL DEFAULT 'queued'
                CHECK (state IN ('queued', 'running', 'done', 'failed')),
            deliveries integer NOT NULL DEFAULT 0,
            failures integer NOT NULL DEFAULT 0,
            total_pages integer,
            total_items integer,
            last_page integer,
            worker text,
            error text,
            enqueued_at timestamptz,
            started_at timestamptz,
            finished_at timestamptz,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (job_id, unit_id)
        )""",
        f"""CREATE TABLE IF NOT EXISTS {s}.page_checkpoints (
            job_id text NOT NULL,
            unit_id text NOT NULL,
            page integer NOT NULL,
            repair boolean NOT NULL,
            records integer NOT NULL,
            rows integer NOT NULL,
            users text[] NOT NULL,
            committed_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (job_id, unit_id, page),
            FOREIGN KEY (job_id, unit_id) REFERENCES {s}.units ON DELETE CASCADE
        )""",
        f"""CREATE TABLE IF NOT EXISTS {s}.errors (
            id bigserial PRIMARY KEY,
            job_id text NOT NULL,
            unit_id text NOT NULL,
            at timestamptz NOT NULL DEFAULT now(),
            worker text,
            kind text NOT NULL,
            error text NOT NULL,
            final boolean NOT NULL,
            FOREIGN KEY (job_id, unit_id) REFERENCES {s}.units ON DELETE CASCADE
        )""",
    ]


@dataclasses.dataclass(frozen=True, slots=True)
class JobRecord:
    """A job as the ledger has it."""

    job_id: str
    results_table: str
    workspaces: bool
    settings: dict[str, Any]
    units: int


@dataclasses.dataclass(slots=True)
class JobStatus:
    """Where a job stands: units by state, pages, records, and the failed units' errors."""

    job: str
    units: dict[str, int]
    pages: int
    records: int
    failed: list[dict[str, str]]

    @property
    def finished(self) -> bool:
        """No unit is queued or running."""
        return not (self.units.get("queued", 0) or self.units.get("running", 0))

    @property
    def ok(self) -> bool:
        """Every unit is done."""
        return self.finished and not self.units.get("failed", 0)

    def to_dict(self) -> dict[str, Any]:
        """The ``fetcher status --json`` object."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    """A unit a worker has taken: the query and what earlier attempts wrote."""

    unit: Unit
    resume: Resume
    deliveries: int
    failures: int


def _lock_key(job_id: str, unit_id: str) -> int:
    """A 64-bit advisory lock number for one unit."""
    digest = hashlib.sha256(f"fetcher-unit\0{job_id}\0{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Ledger:
    """The ledger over one asyncpg connection (``async with Ledger(dsn) as ledger``).

    Args:
        dsn: the PostgreSQL connection string (a secret: never shown).
        schema: the ledger's schema; ``fetcher`` (tests use their own).
        connect_timeout: seconds to wait for the server.
    """

    def __init__(
        self,
        dsn: str | SecretStr,
        *,
        schema: str = LEDGER_SCHEMA,
        connect_timeout: float = 10.0,
    ) -> None:
        self._dsn = dsn if isinstance(dsn, SecretStr) else SecretStr(dsn)
        self.schema = schema
        self._s = quote_ident(schema)
        self.connect_timeout = connect_timeout
        self.target = describe_dsn(self._dsn.get_secret_value())
        self._connection: asyncpg.Connection[Any] | None = None

    def __repr__(self) -> str:
        return f"Ledger({self.target!r}, schema={self.schema!r})"

    @property
    def connection(self) -> asyncpg.Connection[Any]:
        """The open connection."""
        assert self._connection is not None, "use the ledger as an async context manager"
        return self._connection

    def _error(self, what: str, exc: BaseException) -> SinkError:
        text = redact(f"{what}: {type(exc).__name__}: {exc}", self._dsn.get_secret_value())
        return SinkError(text)

    async def __aenter__(self) -> Self:
        try:
            import asyncpg  # noqa: PLC0415  (optional dependency)
        except ImportError:
            raise ConfigError(
                "distributed mode needs asyncpg: pip install 'fetcher[distributed]'",
                field="--sink",
            ) from None
        try:
            self._connection = await asyncpg.connect(
                self._dsn.get_secret_value(), timeout=self.connect_timeout
            )
        except Exception as exc:  # any failure here means "cannot connect"
            raise SinkError(
                str(self._error(f"cannot connect to PostgreSQL at {self.target}", exc))
                + "; check FETCHER_POSTGRES_DSN (or postgres_dsn in the config) and that the "
                "server is running"
            ) from None
        try:
            await self._create_schema()
        except BaseException:
            self._connection.terminate()
            self._connection = None
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                await connection.close(timeout=self.connect_timeout)
            except Exception:
                connection.terminate()

    async def _create_schema(self) -> None:
        import asyncpg  # noqa: PLC0415

        connection = self.connection
        try:
            async with connection.transaction():
                # Two first uses at once must not both create: one waits for the other.
                await connection.execute("SELECT pg_advisory_xact_lock($1)", _lock_key("", ""))
                for statement in _ddl(self.schema):
                    await connection.execute(statement)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise self._error(
                f"cannot create the ledger (schema {self.schema!r}) at {self.target}; check "
                "the user's rights (CREATE on the database)",
                exc,
            ) from None

    # -- jobs ------------------------------------------------------------------

    async def prepare_results(self, table: str, schema: TableSchema) -> None:
        """Create the results table if missing and check its columns (before any request).

        Raises:
            SinkError: the table exists with other columns, or cannot be made.
        """
        import asyncpg  # noqa: PLC0415

        where = f"table {table!r} at {self.target}"
        try:
            await prepare_table(self.connection, table, schema, where)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise self._error(f"cannot use {where}", exc) from None

    async def record_job(
        self,
        job_id: str,
        *,
        results_table: str,
        workspaces: bool,
        settings: Mapping[str, Any],
        units: Sequence[Unit],
    ) -> bool:
        """Record a job and its units as queued; ``False`` if it was recorded already.

        Raises:
            ConfigError: the job id is taken by a job with other units or another
                results table (choose another ``--job-id``).
        """
        connection = self.connection
        s = self._s
        async with connection.transaction():
            existing = await connection.fetchrow(
                f"SELECT results_table, workspaces FROM {s}.jobs WHERE job_id = $1 FOR UPDATE",  # noqa: S608
                job_id,
            )
            if existing is not None:
                ids = {
                    r["unit_id"]
                    for r in await connection.fetch(
                        f"SELECT unit_id FROM {s}.units WHERE job_id = $1",  # noqa: S608
                        job_id,
                    )
                }
                same = (existing["results_table"], existing["workspaces"]) == (
                    results_table,
                    workspaces,
                ) and ids == {u.unit_id for u in units}
                if not same:
                    raise ConfigError(
                        f"job {job_id!r} is in the ledger already with other units or another "
                        "results table (the config or its window changed); choose another "
                        "--job-id, or enqueue the same config",
                        field="--job-id",
                    )
                return False
            await connection.execute(
                f"INSERT INTO {s}.jobs (job_id, results_table, workspaces, settings, units) "  # noqa: S608
                "VALUES ($1, $2, $3, $4::jsonb, $5)",
                job_id,
                results_table,
                workspaces,
                json.dumps(dict(settings), default=str),
                len(units),
            )
            await connection.executemany(
                f"INSERT INTO {s}.units (job_id, unit_id, workspace, window_start, "  # noqa: S608
                "window_end, type, user_batch, spec) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)",
                [
                    (
                        job_id,
                        u.unit_id,
                        u.workspace,
                        u.spec.start,
                        u.spec.end,
                        u.spec.type,
                        u.user_batch,
                        json.dumps(u.spec_json()),
                    )
                    for u in units
                ],
            )
        return True

    async def job(self, job_id: str) -> JobRecord | None:
        """The job, or ``None`` if the ledger has no such job."""
        row = await self.connection.fetchrow(
            f"SELECT job_id, results_table, workspaces, settings, units FROM {self._s}.jobs "  # noqa: S608
            "WHERE job_id = $1",
            job_id,
        )
        if row is None:
            return None
        return JobRecord(
            row["job_id"],
            row["results_table"],
            row["workspaces"],
            json.loads(row["settings"]),
            row["units"],
        )

    async def to_send(self, job_id: str) -> list[str]:
        """Every unit of the job not done, marked queued again (failures forgotten).

        In order of slice, type and batch, the workspaces taking turns: workers
        taking units in that order work on as many keys at once as they can.
        """
        rows = await self.connection.fetch(
            f"UPDATE {self._s}.units SET state = 'queued', failures = 0, error = NULL, "  # noqa: S608
            "enqueued_at = now(), updated_at = now() "
            "WHERE job_id = $1 AND state <> 'done' RETURNING unit_id, window_start, type, "
            "workspace, user_batch",
            job_id,
        )
        rows = sorted(
            rows,
            key=lambda r: (r["workspace"] or "", r["window_start"], r["type"], r["user_batch"]),
        )
        # Workspaces interleaved, so the first units workers take are on different keys.
        rank: dict[str | None, int] = {}
        order = []
        for row in rows:
            n = rank[row["workspace"]] = rank.get(row["workspace"], -1) + 1
            order.append((n, row["workspace"] or "", row["unit_id"]))
        return [unit_id for _, _, unit_id in sorted(order)]

    # -- one unit's life -------------------------------------------------------

    async def claim(self, job_id: str, unit_id: str, *, worker: str) -> Claim | None:
        """Take a unit for this worker; ``None`` if it is done, failed, or someone has it.

        The unit's advisory lock stays with this connection until
        :meth:`release` or the connection's end.
        """
        connection = self.connection
        s = self._s
        locked = await connection.fetchval(
            "SELECT pg_try_advisory_lock($1)", _lock_key(job_id, unit_id)
        )
        if not locked:
            log.info("unit.busy", job=job_id, unit=unit_id)
            return None
        row = await connection.fetchrow(
            f"UPDATE {s}.units SET state = 'running', deliveries = deliveries + 1, "  # noqa: S608
            "worker = $3, started_at = coalesce(started_at, now()), updated_at = now() "
            "WHERE job_id = $1 AND unit_id = $2 AND state IN ('queued', 'running') "
            "RETURNING spec, user_batch, deliveries, failures, total_pages, total_items, last_page",
            job_id,
            unit_id,
            worker,
        )
        if row is None:
            await self.release(job_id, unit_id)
            return None
        unit = Unit.from_json(unit_id, json.loads(row["spec"]), row["user_batch"])
        pages = await connection.fetch(
            f"SELECT page, repair, rows, users FROM {s}.page_checkpoints "  # noqa: S608
            "WHERE job_id = $1 AND unit_id = $2",
            job_id,
            unit_id,
        )
        written: set[str] = set()
        for page in pages:
            written.update(page["users"])
        resume = Resume(
            done=frozenset(p["page"] for p in pages if not p["repair"]),
            end=row["last_page"],
            total_pages=row["total_pages"],
            total_items=row["total_items"],
            written=frozenset(written),
            rows=sum(p["rows"] for p in pages if not p["repair"]),
        )
        return Claim(unit, resume, row["deliveries"], row["failures"])

    async def release(self, job_id: str, unit_id: str) -> None:
        """Let go of the unit's advisory lock."""
        await self.connection.execute("SELECT pg_advisory_unlock($1)", _lock_key(job_id, unit_id))

    async def write_page(
        self,
        job_id: str,
        unit_id: str,
        page: Page,
        *,
        table: str,
        schema: TableSchema,
        plan: QueryPlan,
        user_id_field: str = "userId",
    ) -> int:
        """Upsert the page's rows and commit its checkpoint, in one transaction.

        Returns:
            The rows upserted.

        Raises:
            SinkError: the database refused; nothing of the page is kept.
        """
        import asyncpg  # noqa: PLC0415

        connection = self.connection
        s = self._s
        page_rows = dedupe(schema.rows(page), schema)
        users = [str(record[user_id_field]) for record in page.records]
        try:
            async with connection.transaction():
                if page_rows:
                    await connection.executemany(upsert_sql(table, schema), page_rows)
                await connection.execute(
                    f"INSERT INTO {s}.page_checkpoints (job_id, unit_id, page, repair, "  # noqa: S608
                    "records, rows, users) VALUES ($1, $2, $3, $4, $5, $6, $7) "
                    "ON CONFLICT (job_id, unit_id, page) DO UPDATE SET "
                    "records = excluded.records, rows = excluded.rows, "
                    f"users = ARRAY(SELECT DISTINCT unnest({s}.page_checkpoints.users || "
                    "excluded.users)), committed_at = now()",
                    job_id,
                    unit_id,
                    page.number,
                    page.repair,
                    len(page.records),
                    0 if page.repair else len(page.records) + page.dropped,
                    users,
                )
                await connection.execute(
                    f"UPDATE {s}.units SET total_pages = coalesce($3, total_pages), "  # noqa: S608
                    "total_items = coalesce($4, total_items), last_page = coalesce($5, last_page), "
                    "updated_at = now() WHERE job_id = $1 AND unit_id = $2",
                    job_id,
                    unit_id,
                    plan.total_pages,
                    plan.total_items,
                    plan.end,
                )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise self._error(f"PostgreSQL could not write the page to {table!r}", exc) from None
        return len(page_rows)

    async def finish(self, job_id: str, unit_id: str) -> None:
        """The unit is done: every page and every user is in."""
        await self.connection.execute(
            f"UPDATE {self._s}.units SET state = 'done', error = NULL, finished_at = now(), "  # noqa: S608
            "updated_at = now() WHERE job_id = $1 AND unit_id = $2",
            job_id,
            unit_id,
        )

    async def fail(
        self, job_id: str, unit_id: str, error: BaseException, *, final: bool, worker: str
    ) -> int:
        """Record a failed attempt; with ``final``, the unit is failed. Returns its failures."""
        connection = self.connection
        s = self._s
        text = redact(str(error) or type(error).__name__, self._dsn.get_secret_value())
        async with connection.transaction():
            await connection.execute(
                f"INSERT INTO {s}.errors (job_id, unit_id, worker, kind, error, final) "  # noqa: S608
                "VALUES ($1, $2, $3, $4, $5, $6)",
                job_id,
                unit_id,
                worker,
                type(error).__name__,
                text,
                final,
            )
            failures = await connection.fetchval(
                f"UPDATE {s}.units SET failures = failures + 1, error = $3, "  # noqa: S608
                "state = CASE WHEN $4 THEN 'failed' ELSE 'queued' END, "
                "finished_at = CASE WHEN $4 THEN now() ELSE finished_at END, updated_at = now() "
                "WHERE job_id = $1 AND unit_id = $2 RETURNING failures",
                job_id,
                unit_id,
                text,
                final,
            )
        return int(failures or 0)

    async def fail_workspace(
        self, job_id: str, workspace: str | None, error: BaseException, *, worker: str
    ) -> list[str]:
        """Fail every unit of the workspace that is not done (a refused key): their ids."""
        connection = self.connection
        s = self._s
        text = redact(str(error), self._dsn.get_secret_value())
        async with connection.transaction():
            rows = await connection.fetch(
                f"UPDATE {s}.units SET state = 'failed', error = $3, finished_at = now(), "  # noqa: S608
                "updated_at = now() WHERE job_id = $1 AND workspace IS NOT DISTINCT FROM $2 "
                "AND state IN ('queued', 'running') RETURNING unit_id",
                job_id,
                workspace,
                text,
            )
            ids = [r["unit_id"] for r in rows]
            await connection.executemany(
                f"INSERT INTO {s}.errors (job_id, unit_id, worker, kind, error, final) "  # noqa: S608
                "VALUES ($1, $2, $3, $4, $5, true)",
                [(job_id, unit, worker, type(error).__name__, text) for unit in ids],
            )
        return ids

    async def requeue(self, job_id: str, unit_id: str) -> None:
        """The worker stopped mid-unit (SIGTERM): the rest waits for the next delivery."""
        await self.connection.execute(
            f"UPDATE {self._s}.units SET state = 'queued', updated_at = now() "  # noqa: S608
            "WHERE job_id = $1 AND unit_id = $2 AND state = 'running'",
            job_id,
            unit_id,
        )

    # -- reading ---------------------------------------------------------------

    async def status(self, job_id: str) -> JobStatus | None:
        """Where the job stands, or ``None`` if the ledger has no such job."""
        connection = self.connection
        s = self._s
        if await connection.fetchval(f"SELECT 1 FROM {s}.jobs WHERE job_id = $1", job_id) is None:  # noqa: S608
            return None
        counts = dict.fromkeys(UNIT_STATES, 0)
        for row in await connection.fetch(
            f"SELECT state, count(*) AS n FROM {s}.units WHERE job_id = $1 GROUP BY state",  # noqa: S608
            job_id,
        ):
            counts[row["state"]] = row["n"]
        totals = await connection.fetchrow(
            "SELECT count(*) FILTER (WHERE NOT repair) AS pages, "  # noqa: S608
            f"coalesce(sum(records), 0) AS records FROM {s}.page_checkpoints WHERE job_id = $1",
            job_id,
        )
        failed = [
            {"unit": r["unit_id"], "error": r["error"] or ""}
            for r in await connection.fetch(
                f"SELECT unit_id, error FROM {s}.units WHERE job_id = $1 AND state = 'failed' "  # noqa: S608
                "ORDER BY unit_id",
                job_id,
            )
        ]
        assert totals is not None
        return JobStatus(job_id, counts, int(totals["pages"]), int(totals["records"]), failed)

    async def units(self, job_id: str) -> list[dict[str, Any]]:
        """Every unit row of the job (for tests and tools)."""
        return [
            dict(r)
            for r in await self.connection.fetch(
                f"SELECT * FROM {self._s}.units WHERE job_id = $1 ORDER BY unit_id",  # noqa: S608
                job_id,
            )
        ]

    async def drop_job(self, job_id: str) -> None:
        """Forget a job (its units, checkpoints and errors); the results stay."""
        await self.connection.execute(f"DELETE FROM {self._s}.jobs WHERE job_id = $1", job_id)  # noqa: S608
