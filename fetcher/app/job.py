"""The batch job behind ``fetcher export``: settings in, a finished (or resumable) run out.

In order, so that everything that can be wrong with the input is found
before the first request:

1. the key, the sink (an unwritable output fails here) and, for
   ``base_url = "simulator"``, the built-in simulator;
2. the users: the list, the file, or every team member
   (``GET /v1/user/team-member-list``);
3. the run lock and the state file; with ``--catch-up``, where the last
   completed run of this job ended;
4. the queries: the window cut into slices, times report types, times user
   batches; all of them share one client, so one limiter;
5. the export, checkpointed, resuming an interrupted run of the same queries;
6. on success, the ledger entry that the next ``--catch-up`` starts from.

With ``[[workspaces]]``, step 1 resolves every workspace's key (a missing
variable fails here, naming the workspace), and steps 2 and 4 run per
workspace, each with its own client and so its own limiter; the queries of
all of them then run as one export into one sink
(:class:`~fetcher.run.router.WorkspaceClients` routes each query to its
workspace's client), every row carrying its ``workspace``.
"""

from __future__ import annotations

import datetime as dt
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from fetcher.app.connect import api_key, open_api
from fetcher.app.resolve import preflight, resolve_run, scopes_of
from fetcher.app.settings import ExportSettings, resolve_workspace_key
from fetcher.errors import ConfigError, FetcherError
from fetcher.run.checkpoint import Checkpointer, RunLock, RunState
from fetcher.run.pool import RunSummary, Watcher, export
from fetcher.run.router import WorkspaceClients
from fetcher.sinks.factory import make_sink
from fetcher.spec import format_api_datetime

if TYPE_CHECKING:
    from pydantic import SecretStr

    from fetcher.run.client import Client
    from fetcher.run.router import PageSource
    from fetcher.sinks import Sink
    from fetcher.spec import QuerySpec

__all__ = ["JobOutcome", "run_job"]

log = structlog.get_logger("fetcher.app.job")


@dataclass(slots=True)
class JobOutcome:
    """How a job ended, for the CLI's exit code, messages and report."""

    summary: RunSummary
    sink: Sink | None = None
    error: FetcherError | None = None
    up_to_date: bool = False
    details: dict[str, object] = field(default_factory=dict)


def _output_name(settings: ExportSettings) -> str:
    if settings.sink == "postgres":
        return f"postgres:{settings.table}"
    return str(settings.out)


async def run_job(
    settings: ExportSettings,
    *,
    fresh: bool = False,
    now: dt.datetime | None = None,
    watch: Watcher | None = None,
    key: SecretStr | None = None,
) -> JobOutcome:
    """Run one export job end to end.

    Args:
        settings: validated settings.
        fresh: ignore an interrupted run's checkpoint and start over.
        now: the moment relative windows are evaluated at (default: now).
        watch: runs alongside the export (a progress display), see :func:`export`.
        key: the API key, if the caller resolved it (default: :func:`api_key`).

    Raises:
        ConfigError: for input found wrong before any request was sent.
    """
    if settings.out is None and settings.sink != "postgres":
        raise ConfigError("required: the file to write, e.g. --out stats.jsonl", field="--out")
    workspaces = settings.workspaces or []
    # No key is a usage error, found before anything else; one per workspace.
    keys = {w.name: resolve_workspace_key(w) for w in workspaces}
    if key is None and not workspaces:
        key = api_key(settings)
    sink = make_sink(
        settings.out,
        sink=settings.sink,
        table=settings.table,
        postgres_dsn=settings.postgres_dsn,
        workspaces=bool(workspaces),
    )
    listed = preflight(settings, now=now)  # a bad users file or window fails here
    async with AsyncExitStack() as stack:
        state_path = settings.state_path
        if state_path is not None:
            stack.enter_context(RunLock(state_path))
            if not fresh:  # a torn or hand-edited state fails before any request
                RunState.load(state_path)
        clients: dict[str | None, Client] = {}
        for name, scope in scopes_of(settings):
            own_key = keys[name] if name is not None else key
            api = await stack.enter_async_context(open_api(scope, record=False, key=own_key))
            clients[name] = api.client
        run = await resolve_run(settings, listed, clients=clients, now=now)
        identity, after, specs = run.identity, run.after, run.specs
        client: PageSource = (
            WorkspaceClients({str(name): c for name, c in clients.items()})
            if workspaces
            else clients[None]
        )
        details = _describe(settings, specs, after)
        if not specs:
            log.info("run.up_to_date", completed_through=after.isoformat() if after else None)
            return JobOutcome(RunSummary(), sink, up_to_date=True, details=details)
        checkpoint = None
        if state_path is not None:
            checkpoint = Checkpointer.open(
                state_path,
                specs,
                output=_output_name(settings),
                fresh=fresh,
                interval_s=settings.checkpoint_interval,
            )
        try:
            summary = await export(
                specs,
                sink,
                client=client,
                max_pages=settings.max_pages,
                checkpoint=checkpoint,
                watch=watch,
                expected_path=checkpoint.expected_records_path if checkpoint else None,
                repair_rounds=settings.repair_rounds,
            )
        except FetcherError as exc:
            summary = exc.summary or RunSummary(status="failed", error=str(exc))
            return JobOutcome(summary, sink, error=exc, details=details)
        if summary.ok and checkpoint is not None:
            completed = max(spec.end for spec in specs).isoformat(timespec="milliseconds")
            await checkpoint.finish("complete", ledger={identity: completed}, shape=summary.shape)
            details["completed_through"] = completed
    return JobOutcome(summary, sink, details=details)


def _describe(
    settings: ExportSettings, specs: list[QuerySpec], after: dt.datetime | None
) -> dict[str, object]:
    windows = sorted({(spec.start, spec.end) for spec in specs})
    return {
        "output": _output_name(settings),
        "state": str(settings.state_path) if settings.state_path else None,
        "window": (
            [format_api_datetime(windows[0][0]), format_api_datetime(windows[-1][1])]
            if windows
            else None
        ),
        "slices": len(windows),
        "types": list(settings.type),
        "user_batches": len({spec.user_ids for spec in specs}),
        "workspaces": [w.name for w in settings.workspaces] if settings.workspaces else None,
        "catch_up_after": format_api_datetime(after) if after else None,
    }
