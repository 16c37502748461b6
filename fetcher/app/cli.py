"""The command line: argv -> settings -> run -> exit code.

Thin on purpose: parsing and validation live in :mod:`fetcher.app.settings`, the
work in :mod:`fetcher.run.pool`. This module maps each outcome to an exit code
(see :class:`ExitCode`), writes the run report, and turns errors into one
readable message (a traceback only with ``--debug``).

Commands: ``export``; ``plan`` (what an export would fetch and how long it
must take, :mod:`fetcher.app.plan`); ``check`` (one request: is the key good
and the URL right, :mod:`fetcher.app.check`); ``demo`` (:mod:`fetcher.app.demo`).
``plan`` and ``check`` take the same options as ``export``, so any export
command can be checked or planned by changing its first word.

Every error is printed as one line saying what happened, to which page or
setting, and what to do (:func:`actionable` adds the "what to do" to errors
whose message does not say it). ``--debug`` adds the traceback, with the API
key and other secrets redacted from it.

The live progress display (:mod:`fetcher.app.progress`) shows while an export or
the demo runs, when standard error is a terminal, unless ``--quiet`` or
``--log-format json``. While it shows, log lines are routed through it (they
print above it, whole) and the default log level is ``warning``: the display
stands in for the per-page ``info`` lines. A level the user chose is kept.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import gc
import importlib
import json
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from fetcher import defaults
from fetcher._version import __version__
from fetcher.app.advice import actionable
from fetcher.errors import (
    AuthError,
    ConfigError,
    FetcherError,
)

# What a command needs is loaded when it runs, not for `--help` or a usage
# error: settings (pydantic), logging (structlog), the run (aiohttp, anyio),
# the sinks' libraries. `tests/test_startup.py` holds this.
if TYPE_CHECKING:
    from pydantic import SecretStr

    from fetcher.app.logs import LogFormat
    from fetcher.app.progress import ProgressDisplay
    from fetcher.app.settings import ExportSettings
    from fetcher.run.pool import RunSummary, Watcher
    from fetcher.sinks import Sink

__all__ = ["ExitCode", "actionable", "main"]


class ExitCode(enum.IntEnum):
    """Exit codes; scripts and cron rely on them."""

    OK = 0  #: every page fetched and written
    INTERNAL = 1  #: a bug in fetcher (please report it)
    USAGE = 2  #: invalid flags, config or input; nothing was sent
    AUTH = 3  #: the API refused the key
    INCOMPLETE = 4  #: the run finished but some pages are missing (see the report)
    FAILED = 5  #: the run was stopped: API unreachable, unusable responses, sink failure
    PENDING = 6  #: fetcher status: units are still queued or running
    INTERRUPTED = 130  #: stopped by Ctrl-C / SIGINT


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"fetcher: error: {message}\n")


def _add_logging_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output and logging")
    group.add_argument(
        "--log-format", choices=["console", "json"], help=f"log format ({defaults.LOG_FORMAT})"
    )
    group.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help=f"lowest level ({defaults.LOG_LEVEL})",
    )
    group.add_argument(
        "--debug", action="store_true", help="show tracebacks and debug logs on errors"
    )


def _add_export_options(parser: argparse.ArgumentParser) -> None:
    api = parser.add_argument_group("the API")
    api.add_argument("--base-url", help=f"API base URL ({defaults.BASE_URL})")
    api.add_argument(
        "--api-key-file",
        type=Path,
        help="read the API key from this file (default: the SALESHANDY_API_KEY variable)",
    )
    api.add_argument("--config", type=Path, help="a TOML config file with any of these settings")
    api.add_argument("--ca-bundle", type=Path, help="trust this CA certificate file (a private CA)")
    api.add_argument(
        "--allow-insecure-http",
        action="store_const",
        const=True,
        help="DANGER: allow a plain http:// base URL to a non-local host (the key travels "
        "unencrypted)",
    )

    query = parser.add_argument_group("the query")
    users = query.add_mutually_exclusive_group()
    users.add_argument("--users", help="user ids, comma-separated")
    users.add_argument("--users-file", type=Path, help="a file of user ids, one per line")
    users.add_argument(
        "--all-users",
        action="store_const",
        const=True,
        help="every team member, from GET /v1/user/team-member-list",
    )
    query.add_argument(
        "--user-batch-size",
        type=int,
        help=f"users per query; longer lists are split ({defaults.USER_BATCH_SIZE})",
    )
    query.add_argument("--start", help="window start: YYYY-MM-DD or ISO 8601 datetime")
    query.add_argument("--end", help="window end: YYYY-MM-DD (through 23:59:59.999) or datetime")
    query.add_argument(
        "--window",
        help="a relative window instead of --start/--end: today, yesterday, 'last 7 days', "
        "'week to date', 'last week', 'month to date', 'last month', 'last 3 months', ...",
    )
    query.add_argument(
        "--slice", help="one query per day, week or month of the window (default: none)"
    )
    query.add_argument(
        "--timezone", help=f"IANA zone for days, slices and relative windows ({defaults.TIMEZONE})"
    )
    query.add_argument(
        "--type", help=f"report type: prospect, email, or prospect,email ({defaults.TYPE})"
    )
    query.add_argument("--count-by", help=f"relative or absolute ({defaults.COUNT_BY})")
    query.add_argument("--order-by", help="metric to sort by (prospectAdded / emailSent)")
    query.add_argument("--sort-order", help=f"asc or desc ({defaults.SORT_ORDER})")
    query.add_argument(
        "--page-size", type=int, help=f"records per page, 1-1000 ({defaults.PAGE_SIZE})"
    )

    fetch = parser.add_argument_group("fetching")
    fetch.add_argument(
        "--concurrency",
        type=int,
        help=f"pages fetched at once ({defaults.CONCURRENCY}; with a fast --rate-limit, one second "
        f"of it, at most {defaults.MAX_DEFAULT_CONCURRENCY})",
    )
    fetch.add_argument("--rate-limit", help="request ceiling, e.g. 30/min or 10/s (none)")
    fetch.add_argument(
        "--shared-limiter",
        metavar="URL",
        help="redis://HOST:PORT/DB: share one rate-limit budget with every process on this "
        "key and host (none)",
    )
    fetch.add_argument(
        "--timeout", type=float, help=f"seconds per request ({defaults.TIMEOUT_S:g})"
    )
    fetch.add_argument(
        "--max-attempts",
        type=int,
        help=f"tries per page, retries included ({defaults.MAX_ATTEMPTS})",
    )
    fetch.add_argument(
        "--max-pages", type=int, help=f"most pages one query may have ({defaults.MAX_PAGES})"
    )
    fetch.add_argument("--records-path", help="dotted path to the record list (auto-detected)")
    fetch.add_argument(
        "--user-id-field", help=f"the record field holding the user id ({defaults.USER_ID_FIELD})"
    )
    fetch.add_argument(
        "--max-body-bytes",
        type=int,
        help=f"refuse responses larger than this ({defaults.MAX_BODY_BYTES // 2**20} MiB)",
    )
    fetch.add_argument(
        "--max-retry-after",
        type=float,
        help="longest Retry-After waited for; a page asked to wait longer gives up "
        f"({defaults.MAX_RETRY_AFTER_S:g})",
    )
    fetch.add_argument(
        "--repair-rounds",
        type=int,
        help="re-reads of a query whose users did not all arrive before it fails "
        f"({defaults.REPAIR_ROUNDS})",
    )

    out = parser.add_argument_group("results")
    out.add_argument(
        "--out",
        type=Path,
        help="output file; its extension picks the format: .jsonl, .csv, .parquet, .duckdb",
    )
    out.add_argument(
        "--sink",
        help="jsonl, csv, parquet, duckdb or postgres (default: from --out); postgres reads "
        "its connection string from FETCHER_POSTGRES_DSN or postgres_dsn in --config",
    )
    out.add_argument("--table", help=f"table for database sinks ({defaults.TABLE})")
    out.add_argument("--report", type=Path, help="write a JSON run report here")

    state = parser.add_argument_group("checkpoints and resume")
    state.add_argument(
        "--state", type=Path, help="checkpoint file (default: OUT.state.json beside --out)"
    )
    state.add_argument(
        "--fresh",
        action="store_true",
        help="ignore an interrupted run's checkpoint and start over",
    )
    state.add_argument(
        "--catch-up",
        action="store_const",
        const=True,
        help="start after the last window this job completed (see the state file)",
    )
    state.add_argument(
        "--checkpoint-interval",
        type=float,
        help=f"seconds between checkpoints ({defaults.CHECKPOINT_INTERVAL_S})",
    )


def _add_quiet_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress display, only warnings and errors on stderr",
    )


def _add_distributed_commands(commands: Any) -> None:
    """``enqueue``, ``worker`` and ``status``: one job over many workers (Dramatiq, Redis)."""
    broker_help = (
        "the Redis broker, redis://HOST:PORT/DB (default: FETCHER_BROKER_URL, broker = in the "
        "config, else redis://127.0.0.1:6379/0)"
    )
    enqueue = commands.add_parser(
        "enqueue",
        help="split a job into units and queue them for workers",
        description="Resolve a job into units (workspace x slice x type x user batch), record "
        "them in the PostgreSQL ledger (schema fetcher) and send one message per unit not yet "
        'done. The job must write to PostgreSQL (sink = "postgres", FETCHER_POSTGRES_DSN).',
    )
    enqueue.add_argument("--config", type=Path, required=True, help="the job's TOML config file")
    enqueue.add_argument("--broker", metavar="URL", help=broker_help)
    enqueue.add_argument(
        "--job-id",
        help="the job's id (default: derived from its queries, so the same job "
        "enqueued again resumes)",
    )
    _add_logging_options(enqueue)

    worker = commands.add_parser(
        "worker",
        help="work queued units until SIGTERM",
        description="Run Dramatiq workers for fetcher's queue until SIGTERM or SIGINT. Each "
        "reads its units from the ledger (FETCHER_POSTGRES_DSN) and each workspace's key from "
        "its own environment or key file. On SIGTERM a worker commits the page in hand and "
        "leaves the rest of its unit for the next delivery.",
    )
    worker.add_argument("--broker", metavar="URL", help=broker_help)
    worker.add_argument("--processes", type=int, default=1, help="worker processes (1)")
    worker.add_argument("--threads", type=int, default=4, help="units per process at once (4)")
    worker.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds without a heartbeat before a dead worker's units go to others (60)",
    )
    _add_logging_options(worker)

    status = commands.add_parser(
        "status",
        help="where a distributed job stands",
        description="Units done / running / queued / failed, pages and records of a job, from "
        "the ledger (FETCHER_POSTGRES_DSN, or postgres_dsn in --config). Exit 0: every unit "
        "done; 4: a unit failed; 6: units still queued or running (also at --timeout).",
    )
    status.add_argument("job_id", metavar="JOB_ID", help="the id `fetcher enqueue` printed")
    status.add_argument("--wait", action="store_true", help="wait until no unit is pending")
    status.add_argument("--timeout", type=float, metavar="S", help="with --wait: wait at most S")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument("--config", type=Path, help="a config file naming postgres_dsn")
    _add_logging_options(status)


def build_parser() -> argparse.ArgumentParser:
    """The ``fetcher`` argument parser."""
    parser = _Parser(
        prog="fetcher",
        description="Export Saleshandy team-stats reports: every page, concurrently, politely.",
    )
    parser.add_argument("--version", action="version", version=f"fetcher {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    export_parser = commands.add_parser(
        "export",
        help="export every page of a report to a file",
        description="Export every page of a team-stats report. The API key comes from "
        "SALESHANDY_API_KEY or --api-key-file.",
    )
    _add_export_options(export_parser)
    _add_quiet_option(export_parser)
    _add_logging_options(export_parser)

    plan_parser = commands.add_parser(
        "plan",
        help="show what an export would fetch and the least time it takes",
        description="Resolve an export's settings into its queries (window, slices, report "
        "types, user batches) and estimate its pages, requests and minimum run time under "
        "the rate limit. Takes the same options as export. Sends nothing but page 1 of each "
        "query (once, never retried; --no-probe: not even that) and, for --all-users, the "
        "team member list.",
    )
    _add_export_options(plan_parser)
    planning = plan_parser.add_argument_group("planning")
    planning.add_argument(
        "--probe",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fetch page 1 of each query for exact page counts (default: --probe)",
    )
    planning.add_argument("--json", action="store_true", help="print the plan as JSON")
    _add_logging_options(plan_parser)

    check_parser = commands.add_parser(
        "check",
        help="check the API key and base URL with one request",
        description="Send one request (not retried) and say plainly whether the key works at "
        "the base URL: bad key, wrong host or port, TLS, rate-limited right now. Takes the "
        "same options as export (it uses the API ones and the first user, if any).",
    )
    _add_export_options(check_parser)
    _add_logging_options(check_parser)

    _add_distributed_commands(commands)

    demo_parser = commands.add_parser(
        "demo",
        help="run an export against the built-in simulator",
        description="Start the built-in API simulator (rate-limited, with a few faults) and "
        "export the last days, both report types, into DuckDB and JSONL; then show the "
        "top users from DuckDB.",
    )
    demo_parser.add_argument(
        "--out-dir", type=Path, default=Path("fetcher-demo"), help="where to write (fetcher-demo/)"
    )
    demo_parser.add_argument("--team-size", type=int, default=300, help="simulated users (300)")
    demo_parser.add_argument(
        "--latency-ms", type=float, default=40.0, help="simulated latency per request (40)"
    )
    demo_parser.add_argument(
        "--days", type=int, default=14, help="days up to yesterday, one query each (14)"
    )
    _add_quiet_option(demo_parser)
    _add_logging_options(demo_parser)
    return parser


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that are settings (``--fresh``, ``--debug``, ... are the command's own)."""
    from fetcher.app.settings import ExportSettings  # noqa: PLC0415  (see the imports)

    return {
        name: value
        for name, value in vars(args).items()
        if value is not None and name in ExportSettings.model_fields
    }


def _say(message: str) -> None:
    print(message, file=sys.stderr)  # noqa: T201  (the CLI's own voice)


def _exit_code_for(error: FetcherError) -> ExitCode:
    if isinstance(error, ConfigError):
        return ExitCode.USAGE
    if isinstance(error, AuthError):
        return ExitCode.AUTH
    return ExitCode.FAILED


async def run_export(
    settings: ExportSettings,
    *,
    fresh: bool = False,
    quiet: bool = False,
    watch: Watcher | None = None,
    key: SecretStr | None = None,
) -> ExitCode:
    """Run ``fetcher export`` with validated settings; return the exit code.

    Args:
        settings: validated settings.
        fresh: ignore an interrupted run's checkpoint.
        quiet: say nothing on success.
        watch: a progress display to run alongside the export.
        key: the API key, if already resolved (default: from the settings).

    Raises:
        ConfigError: for input that can only be checked now (users file, key, output).
    """
    import structlog  # noqa: PLC0415  (see the imports)

    from fetcher.app.job import run_job  # noqa: PLC0415

    log = structlog.get_logger("fetcher.app.cli")
    outcome = await run_job(settings, fresh=fresh, watch=watch, key=key)
    summary, error = outcome.summary, outcome.error
    if settings.report is not None:
        # Loaded after the run, not before its first request: its models take a few ms.
        from fetcher.app.report import write_report  # noqa: PLC0415

        write_report(settings.report, summary, **outcome.details)
    log.info(
        "run.finished",
        status="up_to_date" if outcome.up_to_date else summary.status,
        pages=summary.pages,
        records=summary.records,
        requests=summary.requests,
        retries=summary.retries,
        failed_pages=len(summary.failed_pages),
        resumed_pages=summary.resumed_pages,
        duration_s=round(summary.duration_s, 3),
    )
    output = outcome.details.get("output")
    if outcome.up_to_date:
        _say(f"fetcher: up to date: nothing after {outcome.details.get('catch_up_after')}")
        return ExitCode.OK
    if error is not None:
        _say(f"fetcher: error: {actionable(error)}")
        _say(_what_was_kept(outcome.sink, summary))
        return _exit_code_for(error)
    if not summary.ok:
        _say(
            f"fetcher: incomplete: {len(summary.failed_pages)} page(s) missing, "
            f"{len(summary.failed_queries)} query(ies) failed, "
            f"{len(summary.incomplete_queries)} query(ies) short of users; run the same "
            "command again to fetch only what is missing"
        )
        for failed in summary.failed_pages[:20]:
            _say(f"  missing page {failed.page} of {failed.query}: {failed.error}")
        for short in summary.incomplete_queries[:20]:
            missing = ", ".join(short.missing_users[:10]) or "unknown ids"
            _say(
                f"  {short.type} {short.window_start}..{short.window_end}: "
                f"{(short.expected_users or 0) - short.received_users} user(s) never returned "
                f"after {short.repair_rounds} re-read(s): {missing}"
            )
        _say(_what_was_kept(outcome.sink, summary))
        return ExitCode.INCOMPLETE
    if quiet:
        return ExitCode.OK
    resumed = (
        f" (+{summary.resumed_pages} from the interrupted run)" if summary.resumed_pages else ""
    )
    _say(
        f"fetcher: done: {summary.pages} pages{resumed}, {summary.records} records, "
        f"{summary.requests} requests in {summary.duration_s:.1f}s -> {output}"
    )
    return ExitCode.OK


def _what_was_kept(sink: Sink | None, summary: RunSummary) -> str:
    if summary.pages == 0 and not summary.resumed_pages:
        return "fetcher: nothing was written"
    partial = getattr(sink, "partial", None)
    where = f" in {partial}" if partial else ""
    return f"fetcher: kept {summary.pages} written page(s), {summary.records} records{where}"


def _log_format(args: argparse.Namespace, settings: ExportSettings | None) -> LogFormat:
    chosen = args.log_format or (settings.log_format if settings else "console")
    return "json" if chosen == "json" else "console"


def _setup_logging(
    args: argparse.Namespace,
    settings: ExportSettings | None,
    secrets: list[str],
    *,
    calm: bool = False,
    stream: TextIO | None = None,
) -> None:
    """Configure logging from the flags and settings.

    Args:
        args: the parsed command line.
        settings: the loaded settings, if any.
        secrets: strings never to log.
        calm: default to ``warning`` rather than ``info`` (a progress display
            shows, ``--quiet``, or a command whose output is on stdout); a level
            the user chose wins.
        stream: where log lines go (default: standard error).
    """
    fmt = _log_format(args, settings)
    chosen = args.log_level or (
        settings.log_level if settings and "log_level" in settings.model_fields_set else None
    )
    level = "debug" if args.debug else (chosen or ("warning" if calm else "info"))
    from fetcher.app.logs import configure_logging  # noqa: PLC0415  (see the imports)

    configure_logging(fmt=fmt, level=level, secrets=secrets, debug=args.debug, stream=stream)


def _secrets_from_env() -> list[str]:
    key = os.environ.get("SALESHANDY_API_KEY", "").strip()
    return [key] if key else []


def _progress(args: argparse.Namespace, settings: ExportSettings | None) -> ProgressDisplay | None:
    """The live display, if this run should have one (see :mod:`fetcher.app.progress`)."""
    from fetcher.app.progress import ProgressDisplay, wants_progress  # noqa: PLC0415

    if wants_progress(quiet=args.quiet, log_format=_log_format(args, settings)):
        return ProgressDisplay()
    return None


async def _demo(args: argparse.Namespace, secrets: list[str]) -> ExitCode:
    from fetcher.app.demo import run_demo  # noqa: PLC0415  (keeps the simulator off the export path)
    from fetcher.app.progress import current_stderr  # noqa: PLC0415

    display = _progress(args, None)
    _setup_logging(
        args, None, secrets, calm=True, stream=current_stderr() if display is not None else None
    )
    return ExitCode(
        await run_demo(
            out_dir=args.out_dir,
            team_size=args.team_size,
            latency_ms=args.latency_ms,
            days=args.days,
            watch=display,
        )
    )


async def _plan(
    settings: ExportSettings, *, probe: bool, as_json: bool, key: SecretStr | None
) -> ExitCode:
    from fetcher.app.plan import JobPlan, RunPlan, make_job_plan, make_plan  # noqa: PLC0415

    plan: RunPlan | JobPlan
    if settings.workspaces:  # one plan per key, and what the job can use
        plan = await make_job_plan(settings, probe=probe)
    else:
        plan = await make_plan(settings, probe=probe, key=key)
    if as_json:
        print(json.dumps(plan.to_dict(), indent=2))  # noqa: T201  (the command's output)
    else:
        for line in plan.lines():
            print(line)  # noqa: T201  (the command's output)
    return ExitCode.OK


async def _check(settings: ExportSettings, *, key: SecretStr | None) -> ExitCode:
    """One check, or with ``[[workspaces]]`` one per workspace (its key, its URL).

    Every workspace's key is found before any request; the exit code is the first
    failed workspace's, 0 when all pass.
    """
    from fetcher.app.check import check_api  # noqa: PLC0415  (only for this command)
    from fetcher.app.settings import resolve_workspace_key  # noqa: PLC0415

    workspaces = settings.workspaces or []
    scopes: list[tuple[str, ExportSettings, SecretStr | None]] = [
        (f"[{w.name}] ", settings.for_workspace(w), resolve_workspace_key(w)) for w in workspaces
    ]
    code = ExitCode.OK
    for label, scope, scope_key in scopes or [("", settings, key)]:
        result = await check_api(scope, key=scope_key)
        if result.ok:
            print(f"fetcher check: {label}{result.message}")  # noqa: T201  (the command's output)
            continue
        _say(f"fetcher check: {label}{result.message}")
        if code == ExitCode.OK:
            code = _exit_code_for(result.error) if result.error is not None else ExitCode.FAILED
    return code


async def _main(args: argparse.Namespace, secrets: list[str]) -> ExitCode:
    if args.command == "demo":
        _loaded("fetcher.app.demo")
        return await _demo(args, secrets)
    if args.command in ("enqueue", "status"):
        from fetcher.app.distributed import run_distributed  # noqa: PLC0415

        _loaded()
        return ExitCode(await run_distributed(args, secrets))
    from fetcher.app.settings import (  # noqa: PLC0415
        load_settings,
        resolve_api_key,
        resolve_workspace_key,
    )

    settings = load_settings(_flags(args), config_file=args.config)
    if settings.postgres_dsn is not None:
        from fetcher.sinks.postgres import dsn_secrets  # noqa: PLC0415  (see the imports)

        secrets.extend(dsn_secrets(settings.postgres_dsn.get_secret_value()))
    # A key file is read once, here: its value must be known to the log redaction
    # before logging starts, and the commands use this same key (one read, one
    # warning if others can read the file). Unreadable, the command says why.
    key = None
    if settings.api_key_file is not None:
        with contextlib.suppress(ConfigError):
            key = resolve_api_key(settings)
            secrets.append(key.get_secret_value())
    for workspace in settings.workspaces or ():  # each workspace's key, never logged either
        with contextlib.suppress(ConfigError):
            secrets.append(resolve_workspace_key(workspace, warn=False).get_secret_value())
    if args.command == "plan":
        _setup_logging(args, settings, secrets, calm=True)
        _loaded("fetcher.app.plan")
        return await _plan(settings, probe=args.probe, as_json=args.json, key=key)
    if args.command == "check":
        _setup_logging(args, settings, secrets, calm=True)
        _loaded("fetcher.app.check")
        return await _check(settings, key=key)
    from fetcher.app.progress import current_stderr  # noqa: PLC0415  (see the imports)

    display = _progress(args, settings)
    _setup_logging(
        args,
        settings,
        secrets,
        calm=display is not None or args.quiet,
        stream=current_stderr() if display is not None else None,
    )
    _loaded("fetcher.app.job")
    return await run_export(settings, fresh=args.fresh, quiet=args.quiet, watch=display, key=key)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fetcher`` command; return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors, --help, --version
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    with _collector_paused():
        return _run(args)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No garbage collection while the command loads; :func:`_loaded` resumes it.

    Loading a command builds some 50,000 long-lived objects (modules, classes,
    functions, pydantic schemas), and the collector walks them over and over as
    they arrive: 130 collections, about 40 ms of an export's start (an eighth),
    with nothing to free. Afterwards the collector is on or off as the caller had
    it, and what the command froze is unfrozen (tests call :func:`main` in one
    process), unless the caller had frozen objects of its own.
    """
    enabled, frozen = gc.isenabled(), gc.get_freeze_count()
    gc.disable()
    try:
        yield
    finally:
        if not frozen:
            gc.unfreeze()
        if enabled:
            gc.enable()


def _loaded(*modules: str) -> None:
    """The command's code is loaded (``modules`` too): collect garbage from here on.

    ``gc.freeze()`` first moves what loading built to the permanent generation,
    so later collections, during the run, no longer walk it either.
    """
    for module in modules:
        importlib.import_module(module)
    gc.freeze()
    gc.enable()


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; every error becomes one actionable line and an exit code."""
    # Until settings are loaded, log plainly (and never the key). _main adds
    # the secrets it learns (a key file, a DSN) to this list.
    import anyio  # noqa: PLC0415  (see the imports)

    _import_structlog_plain()
    from fetcher.app.logs import configure_logging  # noqa: PLC0415

    secrets = _secrets_from_env()
    configure_logging(fmt=args.log_format or "console", secrets=secrets)
    try:
        if args.command == "worker":  # Dramatiq runs its own event loop
            from fetcher.app.distributed import run_worker_command  # noqa: PLC0415

            _loaded()
            return run_worker_command(args, secrets)
        return int(anyio.run(_main, args, secrets))
    except KeyboardInterrupt:
        _say("fetcher: interrupted; run the same command again to resume")
        return ExitCode.INTERRUPTED
    except Exception as exc:
        if args.debug:
            _say(_redact("".join(traceback.format_exception(exc)).rstrip(), secrets))
        message, code = _describe_failure(exc, debug=args.debug)
        _say(_redact(message, secrets))
        return code


#: Optional packages structlog imports, if installed, to pretty-print tracebacks.
_TRACEBACK_PRETTIFIERS = ("rich", "better_exceptions")


def _import_structlog_plain() -> None:
    """Import structlog without the traceback prettifiers it would load for nothing.

    ``import structlog`` imports rich (when installed) for its tracebacks: about
    20 ms of an export's start. The CLI renders tracebacks with
    ``structlog.dev.plain_traceback`` (see :func:`fetcher.app.logs.configure_logging`),
    so rich is hidden while structlog loads: structlog then takes it as absent,
    as it does when rich is not installed. Only the CLI does this (it owns the
    process) and only when nothing has imported structlog or rich yet; the
    progress display imports rich itself when it shows.
    """
    if "structlog" in sys.modules or any(name in sys.modules for name in _TRACEBACK_PRETTIFIERS):
        return
    for name in _TRACEBACK_PRETTIFIERS:
        sys.modules[name] = None  # type: ignore[assignment]  # "import rich" raises ImportError
    try:
        import structlog  # noqa: F401, PLC0415  (loaded here to be loaded plain)
    finally:
        for name in _TRACEBACK_PRETTIFIERS:
            del sys.modules[name]


def _describe_failure(exc: Exception, *, debug: bool) -> tuple[str, ExitCode]:
    """The one line and the exit code for an error that ended the command."""
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        inner = exc.exceptions[0]
        if not isinstance(inner, Exception):
            break
        exc = inner  # a task group's wrapper around the one error that matters
    if isinstance(exc, ConfigError):
        return f"fetcher: invalid input: {exc}", ExitCode.USAGE
    if isinstance(exc, FetcherError):
        return f"fetcher: error: {actionable(exc)}", _exit_code_for(exc)
    if isinstance(exc, OSError):
        # Outside the sinks (they raise SinkError): the report, the state file, the lock.
        where = f" {exc.filename}" if exc.filename else ""
        return (
            f"fetcher: error: cannot use{where}: {exc.strerror or exc}; check the path "
            "and its permissions",
            ExitCode.FAILED,
        )
    hint = "please report it with the traceback above" if debug else "run with --debug"
    return f"fetcher: internal error: {type(exc).__name__}: {exc} ({hint})", ExitCode.INTERNAL


def _redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret replaced, by the same processor that cleans the logs."""
    from fetcher.app.logs import RedactSecrets  # noqa: PLC0415  (see the imports)

    return str(RedactSecrets(secrets)(None, "print", {"text": text})["text"])
