"""The distributed commands: ``fetcher enqueue``, ``fetcher worker``, ``fetcher status``.

``enqueue`` resolves a job (the settings of ``fetcher export``, with or without
``[[workspaces]]``) into units, records them in the PostgreSQL ledger and sends
one message per unit not yet done. ``worker`` runs Dramatiq workers for
fetcher's queue: each message names a job and a unit; the worker reads the
query and the job's settings from the ledger, resolves the workspace's key
from its **own** environment or key file (keys never travel through Redis or
PostgreSQL), and writes the unit's pages with their checkpoints
(:mod:`fetcher.distributed.runner`). ``status`` reads the ledger.

The broker URL comes from ``--broker``, ``FETCHER_BROKER_URL`` or ``broker =``
in the config (default ``redis://127.0.0.1:6379/0``); the shared limiter
(:mod:`fetcher.http.shared`) is always on, in the same Redis unless the job's
``shared_limiter`` names another, so every worker on every host shares each
key's window from the first request. PostgreSQL is found through
``FETCHER_POSTGRES_DSN`` (or ``postgres_dsn`` in the config, for enqueue and
status).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import anyio
import structlog
from pydantic import SecretStr

from fetcher.app.connect import api_key, open_api
from fetcher.app.resolve import preflight, resolve_run, scopes_of
from fetcher.app.settings import ExportSettings, load_settings, resolve_workspace_key
from fetcher.distributed.broker import (
    DEFAULT_BROKER_URL,
    QUEUE,
    StopFlag,
    UnitRetry,
    declare_actor,
    ping,
    redis_broker,
    send_units,
)
from fetcher.distributed.ledger import LEDGER_SCHEMA, JobStatus, Ledger
from fetcher.distributed.runner import run_unit
from fetcher.distributed.units import check_job_id, split
from fetcher.errors import AuthError, ConfigError, FetcherError, SinkError
from fetcher.sinks._schema import check_table_name, schema_for
from fetcher.sinks.postgres import describe_dsn

if TYPE_CHECKING:
    import dramatiq

    from fetcher.distributed.ledger import Claim
    from fetcher.run.client import Client
    from fetcher.spec import QuerySpec

__all__ = [
    "BROKER_ENV",
    "DSN_ENV",
    "EnqueueResult",
    "UnitWorker",
    "broker_url",
    "enqueue",
    "job_status",
    "run_workers",
]

log = structlog.get_logger("fetcher.app.distributed")

BROKER_ENV: Final = "FETCHER_BROKER_URL"
#: Requests in flight per key in one worker process, unless the job sets ``concurrency``
#: (or a ``rate_limit``, which sizes it): every process on every host shares the key's
#: window, and more in flight per process only piles up at its edges. Measured (benchmark
#: (l), 4 processes on 12 keys): 16 with the auto raise gave 1-10 refusals a run and 0.75-0.85
#: of the ideal; 4 gave none and 0.95.
WORKER_CONCURRENCY: Final = 4
DSN_ENV: Final = "FETCHER_POSTGRES_DSN"


def broker_url(flag: str | None, settings: ExportSettings | None = None) -> str:
    """``--broker``, else ``FETCHER_BROKER_URL``, else ``broker =``, else the default."""
    return (
        flag or os.environ.get(BROKER_ENV) or (settings and settings.broker) or DEFAULT_BROKER_URL
    )


def postgres_dsn(settings: ExportSettings) -> SecretStr:
    """The ledger's and the results' database, for distributed mode.

    Raises:
        ConfigError: the sink is not PostgreSQL (a file on one worker's disk
            cannot be shared), or there is no connection string.
    """
    if settings.sink != "postgres":
        where = f"sink {settings.sink!r}" if settings.sink else f"--out {settings.out}"
        raise ConfigError(
            f"distributed mode writes to PostgreSQL only, not {where}: a file on one worker's "
            'disk cannot be shared; set sink = "postgres" in the config (or FETCHER_SINK=postgres) '
            f"and the connection string in {DSN_ENV}",
            field="--sink",
        )
    if settings.postgres_dsn is None or not settings.postgres_dsn.get_secret_value().strip():
        raise ConfigError(
            f"distributed mode needs PostgreSQL: set {DSN_ENV} (or postgres_dsn in the config), "
            "e.g. postgresql://user@db-host:5432/stats",
            field="postgres_dsn",
        )
    return settings.postgres_dsn


def stored_settings(settings: ExportSettings) -> dict[str, Any]:
    """What the ledger keeps of a job's settings: what was set, never a secret."""
    return settings.model_dump(mode="json", exclude_unset=True, exclude={"postgres_dsn"})


def default_job_id(settings: ExportSettings, specs: list[QuerySpec]) -> str:
    """The same config over the same window gives the same id (so enqueue again resumes)."""
    parts = [settings.table, *sorted(spec.key for spec in specs)]
    return "job-" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _key_for(settings: ExportSettings, name: str | None) -> SecretStr:
    """The key of workspace ``name`` (or the job's), from this process's environment."""
    if name is None:
        return api_key(settings)
    return resolve_workspace_key(settings.workspace(name))


async def _queries(settings: ExportSettings, *, now: dt.datetime | None) -> list[QuerySpec]:
    """Every query of the job, as an export resolves them; team lists with this process's keys."""
    listed = preflight(settings, now=now)  # a bad users file or window fails before any request
    async with AsyncExitStack() as stack:
        clients = {}
        for name, scope in scopes_of(settings):
            if listed[name] is None:
                key = _key_for(settings, name)
                api = await stack.enter_async_context(open_api(scope, record=False, key=key))
                clients[name] = api.client
        return (await resolve_run(settings, listed, clients=clients, now=now)).specs


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """What ``fetcher enqueue`` did."""

    job_id: str
    units: int
    sent: int
    new: bool


async def enqueue(
    settings: ExportSettings,
    *,
    broker_flag: str | None = None,
    job_id: str | None = None,
    broker: dramatiq.Broker | None = None,
    now: dt.datetime | None = None,
    ledger_schema: str = LEDGER_SCHEMA,
) -> EnqueueResult:
    """Record the job's units in the ledger and send a message for each unit not done.

    Args:
        settings: the job's settings (``sink = "postgres"``).
        broker_flag: ``--broker``.
        job_id: ``--job-id`` (default: from the job's queries, see :func:`default_job_id`).
        broker: a broker to send with (tests: Dramatiq's StubBroker); default Redis.
        now: the moment relative windows are evaluated at.
        ledger_schema: the ledger's schema (tests use their own).

    Raises:
        ConfigError: before anything is sent (no PostgreSQL sink, bad job id, Redis
            unreachable, a job id taken by another job).
    """
    dsn = postgres_dsn(settings)
    check_table_name(settings.table)
    if settings.catch_up:
        raise ConfigError(
            "catch-up follows a state file, and distributed jobs have none: give the job its "
            'window (window = "yesterday", or start/end) and enqueue it; the ledger resumes it',
            field="catch_up",
        )
    if job_id is not None:
        check_job_id(job_id)
    if broker is None:
        url = broker_url(broker_flag, settings)
        broker = redis_broker(url)
        ping(broker, describe_dsn(url))
    specs = await _queries(settings, now=now)
    units = split(specs)
    job_id = job_id or default_job_id(settings, specs)
    schema = schema_for(bool(settings.workspaces))
    async with Ledger(dsn, schema=ledger_schema) as ledger:
        await ledger.prepare_results(settings.table, schema)
        new = await ledger.record_job(
            job_id,
            results_table=settings.table,
            workspaces=bool(settings.workspaces),
            settings=stored_settings(settings),
            units=units,
        )
        # The ledger first, then the queue: if sending stops half-way, the next
        # enqueue sends what the ledger still has as not done.
        to_send = await ledger.to_send(job_id)
    sent = await anyio.to_thread.run_sync(send_units, broker, job_id, to_send)
    log.info("job.enqueued", job=job_id, units=len(units), sent=sent, new=new)
    return EnqueueResult(job_id, len(units), sent, new)


async def job_status(
    dsn: SecretStr,
    job_id: str,
    *,
    wait: bool = False,
    timeout_s: float | None = None,
    ledger_schema: str = LEDGER_SCHEMA,
) -> JobStatus:
    """Where the job stands; with ``wait``, once no unit is queued or running (or at the timeout).

    Raises:
        ConfigError: the ledger has no such job.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    async with Ledger(dsn, schema=ledger_schema) as ledger:
        while True:
            status = await ledger.status(job_id)
            if status is None:
                raise ConfigError(
                    f"no job {job_id!r} in the ledger at {ledger.target}; check the id "
                    f"(`fetcher enqueue` prints it) and {DSN_ENV}",
                    field="JOB_ID",
                )
            if not wait or status.finished:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                return status
            await anyio.sleep(0.2)


class UnitWorker:
    """The actor's work: one unit, from claim to done (or failed, or left for later).

    Args:
        dsn: the ledger's database.
        broker: where a stopped unit's message is sent again.
        broker_url: the Redis the shared limiter uses unless the job names another.
        stop: set on SIGTERM: units stop after the page in hand.
        name: this worker, for the ledger (host and process id).
        env: where keys come from (default: ``os.environ``).
        ledger_schema: the ledger's schema (tests use their own).
    """

    def __init__(
        self,
        dsn: SecretStr,
        *,
        broker: dramatiq.Broker,
        broker_url: str | None,
        stop: StopFlag,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        ledger_schema: str = LEDGER_SCHEMA,
    ) -> None:
        self.dsn = dsn
        self.ledger_schema = ledger_schema
        self.broker = broker
        self.broker_url = broker_url
        self.stop = stop
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.env = env
        # One client per key and client settings for the life of the worker: its
        # limiter (the window it has learned) and its connections serve every unit of
        # the key, in this job and the next ones.
        self._clients: dict[str, Client] = {}
        self._stack = contextlib.AsyncExitStack()
        self._opening: anyio.Lock | None = None
        #: units in hand
        self.busy = 0

    async def _client(self, scope: ExportSettings, key: SecretStr) -> Client:
        if self._opening is None:
            self._opening = anyio.Lock()
        which = _client_identity(scope, key)
        async with self._opening:
            client = self._clients.get(which)
            if client is None:
                api = await self._stack.enter_async_context(open_api(scope, record=False, key=key))
                client = self._clients[which] = api.client
            return client

    async def aclose(self) -> None:
        """Close every client (on the worker's event loop, once no unit is in hand)."""
        self._clients.clear()
        await self._stack.aclose()

    async def __call__(self, job_id: str, unit_id: str) -> None:
        """Work the unit named by a message (a no-op for one done, failed or in hand)."""
        self.busy += 1
        try:
            await self._take(job_id, unit_id)
        finally:
            self.busy -= 1

    async def _take(self, job_id: str, unit_id: str) -> None:
        ledger = Ledger(self.dsn, schema=self.ledger_schema)
        try:
            await ledger.__aenter__()
        except SinkError as exc:  # the database is away: Dramatiq tries again later
            raise UnitRetry(f"unit {unit_id}: {exc}") from None
        try:
            claim = await ledger.claim(job_id, unit_id, worker=self.name)
            if claim is None:
                log.info("unit.skipped", job=job_id, unit=unit_id, reason="done, failed or busy")
                return
            try:
                await self._work(ledger, job_id, claim)
            finally:
                with contextlib.suppress(Exception):
                    await ledger.release(job_id, unit_id)
        finally:
            await ledger.__aexit__(None, None, None)

    async def _work(self, ledger: Ledger, job_id: str, claim: Claim) -> None:
        unit = claim.unit
        job = await ledger.job(job_id)
        if job is None:  # the job was dropped from the ledger meanwhile
            return
        attempts = int(job.settings.get("unit_attempts", 3))
        try:
            settings = load_settings(job.settings)
            scope = (
                settings.for_workspace(settings.workspace(unit.workspace))
                if unit.workspace is not None
                else settings
            )
            if unit.workspace is not None:
                key = resolve_workspace_key(settings.workspace(unit.workspace), env=self.env)
            else:
                key = api_key(scope)
            update: dict[str, Any] = {"shared_limiter": scope.shared_limiter or self.broker_url}
            if "concurrency" not in scope.model_fields_set and scope.rate_limit is None:
                update["concurrency"] = WORKER_CONCURRENCY
            scope = scope.model_copy(update=update)
            client = await self._client(scope, key)
            outcome = await run_unit(
                job_id,
                claim,
                client=client,
                ledger=ledger,
                table=job.results_table,
                schema=schema_for(job.workspaces),
                max_pages=scope.max_pages,
                repair_rounds=scope.repair_rounds,
                should_stop=self.stop,
            )
        except AuthError as exc:
            # A refused key: every unit of its workspace fails now, none burns retries.
            failed = await ledger.fail_workspace(job_id, unit.workspace, exc, worker=self.name)
            log.error("unit.key_refused", job=job_id, workspace=unit.workspace, units=len(failed))  # noqa: TRY400
            return
        except ConfigError as exc:
            # This worker cannot do it (no key here, a config it cannot read): say so.
            await ledger.fail(job_id, unit.unit_id, exc, final=True, worker=self.name)
            log.error("unit.failed", job=job_id, unit=unit.unit_id, error=str(exc))  # noqa: TRY400
            return
        except FetcherError as exc:
            failures = claim.failures + 1
            final = failures >= attempts
            await ledger.fail(job_id, unit.unit_id, exc, final=final, worker=self.name)
            log.warning(
                "unit.attempt_failed",
                job=job_id,
                unit=unit.unit_id,
                failures=failures,
                attempts=attempts,
                final=final,
                error=str(exc),
            )
            if not final:
                raise UnitRetry(f"unit {unit.unit_id}: {exc}") from None
            return
        if outcome.stopped:
            await ledger.requeue(job_id, unit.unit_id)
            await anyio.to_thread.run_sync(send_units, self.broker, job_id, [unit.unit_id])
            log.info("unit.left_for_later", job=job_id, unit=unit.unit_id, pages=outcome.pages)
            return
        await ledger.finish(job_id, unit.unit_id)
        log.info("unit.done", job=job_id, unit=unit.unit_id, pages=outcome.pages)


#: The settings a client is made of (with the key): units that agree on them share one.
_CLIENT_FIELDS: Final = frozenset(
    {
        "base_url",
        "allow_insecure_http",
        "ca_bundle",
        "concurrency",
        "rate_limit",
        "shared_limiter",
        "timeout",
        "max_attempts",
        "max_retry_after",
        "max_body_bytes",
        "records_path",
        "user_id_field",
        "simulator",
    }
)


def _client_identity(scope: ExportSettings, key: SecretStr) -> str:
    """A digest of the key and the client's settings (never the key itself)."""
    settings = scope.model_dump_json(include=set(_CLIENT_FIELDS))
    chosen = ",".join(sorted(scope.model_fields_set & {"concurrency"}))
    text = f"{key.get_secret_value()}\0{settings}\0{chosen}"
    return hashlib.sha256(text.encode()).hexdigest()


def worker_dsn() -> SecretStr:
    """The ledger's database for a worker: ``FETCHER_POSTGRES_DSN``.

    Raises:
        ConfigError: it is not set.
    """
    dsn = os.environ.get(DSN_ENV, "").strip()
    if not dsn:
        raise ConfigError(
            f"a worker needs the ledger's database: set {DSN_ENV} "
            "(e.g. postgresql://user@db-host:5432/stats)",
            field=DSN_ENV,
        )
    return SecretStr(dsn)


def shut_down(worker: dramatiq.Worker, work: UnitWorker, stop: StopFlag) -> None:
    """Stop a worker: units commit the page in hand and go back; then clients close."""
    from dramatiq.asyncio import get_event_loop_thread  # noqa: PLC0415

    stop.set()
    deadline = time.monotonic() + 60
    while work.busy and time.monotonic() < deadline:
        time.sleep(0.05)
    loop = get_event_loop_thread()
    if loop is not None:
        with contextlib.suppress(Exception):
            loop.run_coroutine(work.aclose())
    worker.stop(timeout=60_000)


def run_workers(
    url: str, *, processes: int, threads: int, heartbeat_timeout_s: float, argv: list[str]
) -> int:
    """Run workers until SIGTERM or SIGINT; several processes are children of this one.

    Args:
        url: the broker.
        processes: worker processes (1: this one).
        threads: units each process works at once.
        heartbeat_timeout_s: seconds without a heartbeat before a dead worker's
            messages are given to others.
        argv: the options to start a child with (``--processes 1`` is added).

    Raises:
        ConfigError: no ledger database, or Redis unreachable (before any work).
    """
    dsn = worker_dsn()
    if processes > 1:
        return _run_children(processes, argv)
    broker = redis_broker(url, heartbeat_timeout_s=heartbeat_timeout_s)
    ping(broker, describe_dsn(url))
    from dramatiq import Worker  # noqa: PLC0415  (optional dependency)

    stop = StopFlag()
    work = UnitWorker(dsn, broker=broker, broker_url=url, stop=stop)
    declare_actor(broker, work)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    worker = Worker(broker, queues={QUEUE}, worker_threads=threads, worker_timeout=200)
    # One message per thread, not Dramatiq's two: a unit waits in the queue, where
    # any idle worker can take it, rather than behind a busy worker's units.
    worker.queue_prefetch = threads
    worker.start()
    log.info("worker.started", threads=threads, pid=os.getpid())
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        # The units in hand commit their current page and are sent again.
        shut_down(worker, work, stop)
        broker.close()
    log.info("worker.stopped", pid=os.getpid())
    return 0


def _run_children(processes: int, argv: list[str]) -> int:
    """Start ``processes`` single-process workers and pass SIGTERM/SIGINT on to them."""
    children = [
        subprocess.Popen([sys.executable, "-m", "fetcher", "worker", *argv, "--processes", "1"])  # noqa: S603
        for _ in range(processes)
    ]
    stopping = threading.Event()

    def forward(signum: int, _frame: object) -> None:
        stopping.set()
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    codes = [child.wait() for child in children]
    return max(codes, default=0) if not stopping.is_set() else max(0, *codes)


# -- the commands, as the CLI runs them ------------------------------------------------------


def _say(message: str, *, out: bool = False) -> None:
    print(message, file=sys.stdout if out else sys.stderr)


def _configure(args: Any, settings: ExportSettings | None, secrets: list[str]) -> None:
    from fetcher.app.logs import configure_logging  # noqa: PLC0415

    if settings is not None and settings.postgres_dsn is not None:
        from fetcher.sinks.postgres import dsn_secrets  # noqa: PLC0415

        secrets.extend(dsn_secrets(settings.postgres_dsn.get_secret_value()))
    level = "debug" if args.debug else (args.log_level or "warning")
    configure_logging(
        fmt="json" if args.log_format == "json" else "console",
        level=level,
        secrets=secrets,
        debug=args.debug,
    )


def _secrets_of(settings: ExportSettings) -> list[str]:
    """Every key this process can see for the job (never to be logged)."""
    found = []
    for workspace in settings.workspaces or ():
        with contextlib.suppress(ConfigError):
            found.append(resolve_workspace_key(workspace, warn=False).get_secret_value())
    return found


async def run_distributed(args: Any, secrets: list[str]) -> int:
    """``fetcher enqueue`` and ``fetcher status``; returns the exit code.

    Raises:
        ConfigError: invalid input, found before anything is sent.
    """
    if args.command == "enqueue":
        settings = load_settings({}, config_file=args.config)
        secrets.extend(_secrets_of(settings))
        _configure(args, settings, secrets)
        result = await enqueue(settings, broker_flag=args.broker, job_id=args.job_id)
        if result.sent == 0:
            _say(
                f"job {result.job_id}: complete, all {result.units} units done; nothing sent",
                out=True,
            )
        else:
            again = "" if result.new else f" (enqueued again: {result.units - result.sent} done)"
            _say(f"job {result.job_id}: {result.units} units, {result.sent} sent{again}", out=True)
        return 0
    config = load_settings({}, config_file=args.config) if args.config else None
    _configure(args, config, secrets)
    dsn = config.postgres_dsn if config is not None else None
    if dsn is None:
        dsn = worker_dsn()
    secrets.extend(_dsn_secrets(dsn))
    status = await job_status(dsn, args.job_id, wait=args.wait, timeout_s=args.timeout)
    if args.json:
        import json  # noqa: PLC0415

        _say(json.dumps(status.to_dict()), out=True)
    else:
        units = status.units
        _say(
            f"job {status.job}: {units['done']} done, {units['running']} running, "
            f"{units['queued']} queued, {units['failed']} failed; "
            f"{status.pages} pages, {status.records} records",
            out=True,
        )
        for failed in status.failed[:50]:
            _say(f"  failed {failed['unit']}: {failed['error']}", out=True)
    if not status.finished:
        return 6
    return 0 if status.ok else 4


def _dsn_secrets(dsn: SecretStr) -> list[str]:
    from fetcher.sinks.postgres import dsn_secrets  # noqa: PLC0415

    return dsn_secrets(dsn.get_secret_value())


def run_worker_command(args: Any, secrets: list[str]) -> int:
    """``fetcher worker``; returns the exit code.

    Raises:
        ConfigError: invalid options, no ledger database, Redis unreachable.
    """
    _configure(args, None, secrets)
    if args.processes < 1 or args.threads < 1:
        raise ConfigError("must be at least 1", field="--processes/--threads")
    if args.heartbeat_timeout <= 0:
        raise ConfigError("must be above 0 seconds", field="--heartbeat-timeout")
    argv = ["--threads", str(args.threads), "--heartbeat-timeout", str(args.heartbeat_timeout)]
    if args.broker:
        argv += ["--broker", args.broker]
    for flag in ("log_format", "log_level"):
        if getattr(args, flag):
            argv += ["--" + flag.replace("_", "-"), getattr(args, flag)]
    secrets.extend(_dsn_secrets(worker_dsn()))
    return run_workers(
        broker_url(args.broker),
        processes=args.processes,
        threads=args.threads,
        heartbeat_timeout_s=args.heartbeat_timeout,
        argv=argv,
    )
