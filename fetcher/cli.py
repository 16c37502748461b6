"""The command line: argv -> settings -> run -> exit code.

Thin on purpose: parsing and validation live in :mod:`fetcher.settings`, the
work in :mod:`fetcher.runner`. This module maps each outcome to an exit code
(see :class:`ExitCode`), writes the run report, and turns errors into one
readable message (a traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import anyio
import structlog

from fetcher._version import __version__
from fetcher.errors import AuthError, ConfigError, FetcherError
from fetcher.job import run_job
from fetcher.logs import configure_logging
from fetcher.runner import RunSummary
from fetcher.settings import ExportSettings, load_settings, resolve_api_key
from fetcher.sinks import Sink
from fetcher.sinks.postgres import dsn_secrets

__all__ = ["ExitCode", "main"]

log = structlog.get_logger("fetcher.cli")


class ExitCode(enum.IntEnum):
    """Exit codes; scripts and cron rely on them."""

    OK = 0  #: every page fetched and written
    INTERNAL = 1  #: a bug in fetcher (please report it)
    USAGE = 2  #: invalid flags, config or input; nothing was sent
    AUTH = 3  #: the API refused the key
    INCOMPLETE = 4  #: the run finished but some pages are missing (see the report)
    FAILED = 5  #: the run was stopped: API unreachable, unusable responses, sink failure
    INTERRUPTED = 130  #: stopped by Ctrl-C / SIGINT


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"fetcher: error: {message}\n")


def _add_logging_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output and logging")
    group.add_argument("--log-format", choices=["console", "json"], help="log format (console)")
    group.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="lowest level (info)"
    )
    group.add_argument(
        "--debug", action="store_true", help="show tracebacks and debug logs on errors"
    )


def _add_export_options(parser: argparse.ArgumentParser) -> None:
    api = parser.add_argument_group("the API")
    api.add_argument("--base-url", help="API base URL (https://open-api.saleshandy.com)")
    api.add_argument(
        "--api-key-file",
        type=Path,
        help="read the API key from this file (default: the SALESHANDY_API_KEY variable)",
    )
    api.add_argument("--config", type=Path, help="a TOML config file with any of these settings")

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
        "--user-batch-size", type=int, help="users per query; longer lists are split (1000)"
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
    query.add_argument("--timezone", help="IANA zone for days, slices and relative windows (UTC)")
    query.add_argument("--type", help="report type: prospect, email, or prospect,email")
    query.add_argument("--count-by", help="relative or absolute (absolute)")
    query.add_argument("--order-by", help="metric to sort by (prospectAdded / emailSent)")
    query.add_argument("--sort-order", help="asc or desc (desc)")
    query.add_argument("--page-size", type=int, help="records per page, 1-1000 (50)")

    fetch = parser.add_argument_group("fetching")
    fetch.add_argument("--concurrency", type=int, help="pages fetched at once (16)")
    fetch.add_argument("--rate-limit", help="request ceiling, e.g. 30/min or 10/s (none)")
    fetch.add_argument("--timeout", type=float, help="seconds per request (30)")
    fetch.add_argument("--max-attempts", type=int, help="tries per page, retries included (6)")
    fetch.add_argument("--max-pages", type=int, help="most pages one query may have (10000)")
    fetch.add_argument("--records-path", help="dotted path to the record list (auto-detected)")
    fetch.add_argument("--user-id-field", help="the record field holding the user id (userId)")
    fetch.add_argument(
        "--repair-rounds",
        type=int,
        help="re-reads of a query whose users did not all arrive before it fails (3)",
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
    out.add_argument("--table", help="table for database sinks (team_stats)")
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
        "--checkpoint-interval", type=float, help="seconds between checkpoints (1.0)"
    )


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
    _add_logging_options(export_parser)

    demo_parser = commands.add_parser(
        "demo",
        help="run an export against the built-in simulator",
        description="Start the built-in API simulator and export a report from it.",
    )
    demo_parser.add_argument(
        "--out-dir", type=Path, default=Path("fetcher-demo"), help="where to write (fetcher-demo/)"
    )
    demo_parser.add_argument("--team-size", type=int, default=480, help="simulated users (480)")
    demo_parser.add_argument(
        "--latency-ms", type=float, default=80.0, help="simulated latency per request (80)"
    )
    _add_logging_options(demo_parser)
    return parser


_NOT_SETTINGS = frozenset({"command", "config", "debug", "fresh"})


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        name: value
        for name, value in vars(args).items()
        if value is not None and name not in _NOT_SETTINGS and name in ExportSettings.model_fields
    }


def write_report(path: Path, summary: RunSummary, **extra: Any) -> None:
    """Write the run report atomically (a reader never sees half a report)."""
    data = {**summary.to_dict(), **extra, "fetcher_version": __version__}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, default=str)
            handle.write("\n")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _say(message: str) -> None:
    print(message, file=sys.stderr)  # noqa: T201  (the CLI's own voice)


def _exit_code_for(error: FetcherError) -> ExitCode:
    if isinstance(error, ConfigError):
        return ExitCode.USAGE
    if isinstance(error, AuthError):
        return ExitCode.AUTH
    return ExitCode.FAILED


async def run_export(settings: ExportSettings, *, fresh: bool = False) -> ExitCode:
    """Run ``fetcher export`` with validated settings; return the exit code.

    Raises:
        ConfigError: for input that can only be checked now (users file, key, output).
    """
    outcome = await run_job(settings, fresh=fresh)
    summary, error = outcome.summary, outcome.error
    if settings.report is not None:
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
        _say(f"fetcher: error: {error}")
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
    resumed = (
        f" (+{summary.resumed_pages} from the interrupted run)" if summary.resumed_pages else ""
    )
    _say(
        f"fetcher: done: {summary.pages} pages{resumed}, {summary.records} records, "
        f"{summary.requests} requests in {summary.duration_s:.1f}s -> {output}"
    )
    return ExitCode.OK


def _what_was_kept(sink: Sink | None, summary: RunSummary) -> str:
    partial = getattr(sink, "partial", None)
    where = f" in {partial}" if partial else ""
    return f"fetcher: kept {summary.pages} written page(s), {summary.records} records{where}"


def _setup_logging(
    args: argparse.Namespace, settings: ExportSettings | None, secrets: list[str]
) -> None:
    fmt = args.log_format or (settings.log_format if settings else "console")
    level = (
        "debug" if args.debug else (args.log_level or (settings.log_level if settings else "info"))
    )
    configure_logging(fmt=fmt, level=level, secrets=secrets, debug=args.debug)


def _secrets_from_env() -> list[str]:
    key = os.environ.get("SALESHANDY_API_KEY", "").strip()
    return [key] if key else []


async def _main(args: argparse.Namespace) -> ExitCode:
    if args.command == "demo":
        from fetcher.demo import run_demo  # noqa: PLC0415  (keeps the simulator off the export path)

        _setup_logging(args, None, [])
        return ExitCode(
            await run_demo(
                out_dir=args.out_dir, team_size=args.team_size, latency_ms=args.latency_ms
            )
        )
    settings = load_settings(_flags(args), config_file=args.config)
    secrets = _secrets_from_env()
    if settings.postgres_dsn is not None:
        secrets.extend(dsn_secrets(settings.postgres_dsn.get_secret_value()))
    if settings.api_key_file is not None:
        with contextlib.suppress(ConfigError):
            secrets.append(resolve_api_key(settings).get_secret_value())
    _setup_logging(args, settings, secrets)
    return await run_export(settings, fresh=args.fresh)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fetcher`` command; return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors, --help, --version
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    # Until settings are loaded, log plainly (and never the key).
    configure_logging(fmt=args.log_format or "console", secrets=_secrets_from_env())
    try:
        return int(anyio.run(_main, args))
    except ConfigError as exc:
        _say(f"fetcher: invalid input: {exc}")
        return ExitCode.USAGE
    except FetcherError as exc:
        if args.debug:
            raise
        _say(f"fetcher: error: {exc}")
        return _exit_code_for(exc)
    except KeyboardInterrupt:
        _say("fetcher: interrupted")
        return ExitCode.INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        _say(f"fetcher: internal error: {type(exc).__name__}: {exc} (run with --debug for details)")
        return ExitCode.INTERNAL
