"""fetcher as a dlt source: Saleshandy team stats into any of dlt's destinations.

``pip install 'fetcher[dlt]'``, then::

    import dlt
    from fetcher.integrations.dlt import team_stats_source

    pipeline = dlt.pipeline(
        pipeline_name="saleshandy", destination="duckdb", dataset_name="saleshandy"
    )
    source = team_stats_source(all_users=True, window="last 7 days", slice="day", catch_up=True)
    pipeline.run(source)

dlt keeps loading; fetcher does the fetching: page 1 first, then the other pages
concurrently under one rate limiter, retries (a rate limit answered as 400, a
truncated 200), one row per user per window with a repair pass for users that
moved between pages.

Settings
    The settings of ``fetcher export``, as keyword arguments with the settings'
    names (``window="last 7 days"``, ``type=["prospect", "email"]``), or
    ``config="path.toml"`` (the same file ``fetcher export --config`` reads);
    keyword arguments win over ``FETCHER_*`` variables, which win over the
    file, as flags do for the command. They are validated by the app's own
    settings model (:func:`fetcher.app.settings.load_settings`) and cut into
    queries by it (``ExportSettings.queries``), so a config file means exactly
    what it means to ``fetcher export``: ``YYYY-MM-DD`` dates are whole days in
    ``timezone``, ``slice`` cuts the window, report types times user batches.
    Where rows go is dlt's business: ``out``, ``sink``, ``table``,
    ``postgres_dsn``, ``report``, ``state`` and ``checkpoint_interval`` are
    refused as keyword arguments and ignored in a config file (one file can
    serve the command and the pipeline). Invalid settings raise
    :class:`~fetcher.errors.ConfigError` from :func:`team_stats_source`, before
    any request.

The key
    ``api_key_file`` if set, else ``SALESHANDY_API_KEY``, else dlt's secrets:
    ``dlt.secrets["sources.saleshandy.api_key"]`` (``.dlt/secrets.toml``, or
    ``SOURCES__SALESHANDY__API_KEY``). It is held as a secret and sent only in
    the ``x-api-key`` header.

The resource ``team_stats``
    Each page is yielded as it arrives (a list of rows; nothing is buffered
    per query). One row per user, window and report type: ``window_start``,
    ``window_end`` (timestamps with time zone), ``type``, ``count_by``,
    ``user_id``, then the record's own fields under the names dlt gives them
    (``firstName`` -> ``first_name``, ``prospectAdded`` -> ``prospect_added``,
    ``unSubscribed`` -> ``un_subscribed``, ``"Not Interested"`` ->
    ``not_interested``), counts as bigint. The user id field (``userId``, or
    ``user_id_field``) is renamed to ``user_id``, not copied: no field has two
    spellings. ``write_disposition="merge"`` on the primary key
    :data:`PRIMARY_KEY`, so running the same window again replaces rows.

Incremental
    With ``catch_up = true`` the resource keeps, in dlt's resource state, the
    end of the last window it fetched completely for this job (the report
    types, users and query options: ``ExportSettings.job_identity``, the key of
    ``fetcher export --catch-up``'s ledger), and a later run fetches only the
    slices after it: with ``window = "last N days"``, a scheduled
    ``pipeline.run`` fetches only the days since the last successful load. The
    state is dlt's: committed with the load package, restored from the
    destination like any dlt state; no fetcher state file is written.

Errors, as dlt raises them (``PipelineStepFailed``, the cause chained)
    - invalid settings: :class:`~fetcher.errors.ConfigError` from
      :func:`team_stats_source` itself, before any request;
    - a refused key: :class:`~fetcher.errors.AuthError`, from one probe of
      ``GET /v1/user/team-member-list`` (the users, with ``all_users``) before
      any team-stats page is asked for;
    - pages that ran out of retries, or users that never arrived:
      :class:`IncompleteExtractError`, raised once every other page has been
      fetched and handed to dlt, naming each missing page (report type, window,
      page number, last error) and each short window. dlt does not load an
      extract that raised: the catch-up position stays where it was, and
      running the pipeline again fetches the same windows again (merge keeps
      rows unique). With ``on_incomplete="load"`` the extract ends instead, dlt
      loads every page that was fetched (the position still stays), and
      :func:`raise_for_incomplete` raises :class:`IncompleteLoadError` after
      the load, naming the same pages: loaded first, then failed.

The work runs in a thread of its own with its own event loop (an anyio
blocking portal): dlt calls resources from synchronous code, and fetcher's
worker pool lives in one anyio task group, which must be entered and left by
the same task.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import structlog
from anyio.from_thread import start_blocking_portal
from pydantic import SecretStr

try:
    import dlt
    from dlt.common.schema.typing import TColumnSchema
    from dlt.sources import DltSource
except ModuleNotFoundError as exc:  # the base install has no dlt
    raise ModuleNotFoundError(
        f"fetcher.integrations.dlt needs dlt ({exc}); pip install 'fetcher[dlt]'", name=exc.name
    ) from exc

from fetcher.app.connect import SIMULATOR_KEY, open_api
from fetcher.app.resolve import preflight, resolve_run, scopes_of
from fetcher.app.settings import (
    API_KEY_ENV,
    ExportSettings,
    load_settings,
    resolve_api_key,
    resolve_workspace_key,
)
from fetcher.errors import ConfigError, FetcherError, IncompleteRunError
from fetcher.run.router import WorkspaceClients
from fetcher.spec import EMAIL_METRICS, PROSPECT_METRICS, format_api_datetime

if TYPE_CHECKING:
    from fetcher.models import Page
    from fetcher.run.client import Client
    from fetcher.run.pool import PageStream, RunSummary
    from fetcher.spec import QuerySpec

__all__ = [
    "PRIMARY_KEY",
    "RESOURCE_NAME",
    "SECRET_KEY",
    "SOURCE_NAME",
    "WORKSPACE_PRIMARY_KEY",
    "IncompleteExtractError",
    "IncompleteLoadError",
    "OnIncomplete",
    "raise_for_incomplete",
    "rows",
    "team_stats_source",
]

log = structlog.get_logger("fetcher.integrations.dlt")

#: The source's name: dlt's schema, its state and its config section (``sources.saleshandy``).
SOURCE_NAME: Final = "saleshandy"
#: The resource, and so the table.
RESOURCE_NAME: Final = "team_stats"
#: Where the key is looked up in dlt's secrets when ``SALESHANDY_API_KEY`` is not set.
SECRET_KEY: Final = f"sources.{SOURCE_NAME}.api_key"
#: One user's counts for one report over one window.
PRIMARY_KEY: Final = ("window_start", "window_end", "type", "count_by", "user_id")
#: The primary key with ``[[workspaces]]``: one workspace's user is not another's.
WORKSPACE_PRIMARY_KEY: Final = ("workspace", *PRIMARY_KEY)

#: Settings that say where ``fetcher export`` writes; dlt's destination decides that here.
OUTPUT_SETTINGS: Final = frozenset(
    {"out", "sink", "table", "postgres_dsn", "report", "state", "checkpoint_interval"}
)
#: The resource state's key for the catch-up positions, per job identity.
_LEDGER: Final = "completed_through"
#: Where an extract that ended short (``on_incomplete="load"``) says what is missing.
_INCOMPLETE: Final = "incomplete"

#: What an extract that ended short does (see :func:`team_stats_source`).
OnIncomplete = Literal["raise", "load"]


def _columns(*, workspaces: bool = False) -> dict[str, TColumnSchema]:
    """Column hints: the key not null, the window as timestamps with a zone, counts as bigint.

    Metrics are named as the API spells them; dlt normalises hint names as it
    normalises the data's, so each hint lands on the column the data fills.
    """
    window: TColumnSchema = {"data_type": "timestamp", "timezone": True, "nullable": False}
    text: TColumnSchema = {"data_type": "text", "nullable": False}
    columns: dict[str, TColumnSchema] = {
        "window_start": dict(window),  # type: ignore[dict-item]
        "window_end": dict(window),  # type: ignore[dict-item]
        "type": dict(text),  # type: ignore[dict-item]
        "count_by": dict(text),  # type: ignore[dict-item]
        "user_id": dict(text),  # type: ignore[dict-item]
    }
    if workspaces:
        columns = {"workspace": dict(text), **columns}  # type: ignore[dict-item]
    for metric in dict.fromkeys(PROSPECT_METRICS + EMAIL_METRICS):
        columns[metric] = {"data_type": "bigint", "nullable": True}
    return columns


class IncompleteExtractError(IncompleteRunError):
    """Pages or users are missing after every other page was fetched and handed to dlt.

    The message names each missing page (report type, window, page, last error)
    and each window whose users did not all arrive; ``summary`` is the run's
    :class:`~fetcher.RunSummary`.
    """

    def __init__(self, summary: RunSummary, specs: Sequence[QuerySpec]) -> None:
        super().__init__(summary)
        by_key = {spec.key: spec for spec in specs}
        missing = []
        for failed in summary.failed_pages:
            spec = by_key.get(failed.query)
            what = _describe(spec) if spec is not None else f"query {failed.query}"
            missing.append(f"page {failed.page} of {what} ({failed.error})")
        for key in summary.failed_queries:
            spec = by_key.get(key)
            missing.append(f"all of {_describe(spec) if spec is not None else key}")
        for short in summary.incomplete_queries:
            ids = ", ".join(short.missing_users[:10]) or "unknown ids"
            count = (short.expected_users or 0) - short.received_users
            missing.append(
                f"{count} user(s) of {short.type} {short.window_start}..{short.window_end} "
                f"never returned after {short.repair_rounds} re-read(s): {ids}"
            )
        self.missing = missing
        shown = "; ".join(missing[:20])
        if len(missing) > 20:
            shown += f"; and {len(missing) - 20} more"
        self.message = (
            f"run incomplete: {shown}. Every other page ({summary.pages}, {summary.records} "
            "records) was fetched and handed to dlt; run the pipeline again to fetch "
            "the missing ones (merge keeps rows unique)"
        )
        self.args = (self.message,)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.summary, self.message))


def _rebuild(summary: Any, message: str) -> IncompleteExtractError:
    """Unpickle (dlt keeps exceptions in its traces): the summary and the message as they were."""
    error = IncompleteExtractError.__new__(IncompleteExtractError)
    IncompleteRunError.__init__(error, summary)
    error.message = message
    error.args = (message,)
    error.missing = []
    return error


class IncompleteLoadError(FetcherError):
    """The last load of ``team_stats`` holds every page fetched, but some are missing.

    Raised by :func:`raise_for_incomplete` after a run with
    ``on_incomplete="load"``; ``missing`` names each missing page.
    """

    def __init__(self, message: str, missing: Sequence[str]) -> None:
        super().__init__(message)
        self.missing = list(missing)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.missing))


def raise_for_incomplete(pipeline: dlt.Pipeline) -> None:
    """Raise :class:`IncompleteLoadError` if the pipeline's last ``team_stats`` extract was short.

    For ``on_incomplete="load"``: ``pipeline.run(source)`` loads every page that
    was fetched, then this call fails the job, naming the missing pages::

        pipeline.run(team_stats_source(window="last 7 days", on_incomplete="load"))
        raise_for_incomplete(pipeline)
    """
    sources = pipeline.state.get("sources", {})
    resource = sources.get(SOURCE_NAME, {}).get("resources", {}).get(RESOURCE_NAME, {})
    found = resource.get(_INCOMPLETE)
    if found:
        raise IncompleteLoadError(str(found["message"]), found["missing"])


def _describe(spec: QuerySpec) -> str:
    return (
        f"{spec.type} {format_api_datetime(spec.start)}..{format_api_datetime(spec.end)} "
        f"({len(spec.user_ids)} users)"
    )


@dataclass(frozen=True, slots=True)
class _Job:
    """What one extract needs: validated settings, the keys, the users if known, the clock."""

    settings: ExportSettings
    keys: dict[str | None, SecretStr]  # per workspace; {None: key} without workspaces
    listed: dict[str | None, list[str] | None]  # None: every team member, asked at extract
    now: dt.datetime | None
    on_incomplete: OnIncomplete = "raise"


def team_stats_source(
    *,
    config: str | os.PathLike[str] | None = None,
    now: dt.datetime | None = None,
    on_incomplete: OnIncomplete = "raise",
    **settings: Any,
) -> DltSource:
    """A dlt source with one resource, ``team_stats``: every page fetched by fetcher.

    Args:
        config: a TOML file of settings, as ``fetcher export --config`` reads it.
        now: the moment relative windows (``window = "last 7 days"``) are
            evaluated at; default: when the resource runs. Time-zone aware.
        on_incomplete: when pages are still missing after their retries,
            ``"raise"`` fails the extract with :class:`IncompleteExtractError`
            (dlt then loads nothing of it); ``"load"`` ends the extract so that
            dlt loads every page that was fetched, keeps the catch-up position
            where it was, and leaves the missing pages for
            :func:`raise_for_incomplete` to raise after the load.
        **settings: any setting of ``fetcher export`` by its name (``users``,
            ``users_file``, ``all_users``, ``window``, ``start``, ``end``,
            ``slice``, ``timezone``, ``type``, ``concurrency``, ``rate_limit``,
            ``catch_up``, ``base_url``, ...). Keyword arguments override
            ``FETCHER_*`` variables, which override the file.

    Returns:
        The source ``saleshandy``; its resource ``team_stats`` merges on
        :data:`PRIMARY_KEY`.

    Raises:
        ConfigError: an unknown or invalid setting, an unusable window, an
            unreadable users file, or no API key; nothing has been sent.
    """
    if on_incomplete not in ("raise", "load"):
        raise ConfigError("must be 'raise' or 'load'", field="on_incomplete=")
    if now is not None and now.utcoffset() is None:
        raise ConfigError("must be time-zone aware, e.g. datetime(..., tzinfo=UTC)", field="now")
    if "api_key" in settings:
        raise ConfigError(
            f"the key is not an argument (it would end up in code and traces); set "
            f"{API_KEY_ENV}, or {SECRET_KEY} in .dlt/secrets.toml, or api_key_file",
            field="api_key=",
        )
    if output := sorted(OUTPUT_SETTINGS & settings.keys()):
        raise ConfigError(
            "where rows go is the pipeline's destination (dlt.pipeline(destination=...)); "
            f"drop {', '.join(f'{name}=' for name in output)}",
            field=f"{output[0]}=",
        )
    try:
        loaded = load_settings(settings, config_file=Path(config) if config is not None else None)
    except ConfigError as exc:
        raise _as_keyword(exc) from None
    workspaces = loaded.workspaces or []
    # Every key now, before any request: the job's, or each workspace's.
    keys: dict[str | None, SecretStr] = {w.name: resolve_workspace_key(w) for w in workspaces}
    if not workspaces:
        keys[None] = _api_key(loaded)
    try:
        listed = preflight(loaded, now=now)
        # Every query the settings make, checked now (order_by against type, the
        # window, the slices), as `fetcher export` checks them before any request;
        # with every team member, one stand-in id until the list is fetched.
        for name, scope in scopes_of(loaded):
            scope.queries(listed[name] or ["?"], now=now, workspace=name)
    except ConfigError as exc:
        raise _as_keyword(exc) from None
    job = _Job(loaded, keys, listed, now, on_incomplete)
    resource = dlt.resource(
        _team_stats(job),
        name=RESOURCE_NAME,
        write_disposition="merge",
        primary_key=WORKSPACE_PRIMARY_KEY if workspaces else PRIMARY_KEY,
        columns=_columns(workspaces=bool(workspaces)),
    )
    return DltSource(dlt.Schema(SOURCE_NAME), SOURCE_NAME, [resource])


def _as_keyword(error: ConfigError) -> ConfigError:
    """Name a setting as the keyword argument it was (``--page-size`` -> ``page_size=``)."""
    field = error.field
    if field is not None and field.startswith("--"):
        return ConfigError(error.message, field=field.removeprefix("--").replace("-", "_") + "=")
    return error


def _api_key(settings: ExportSettings, env: Mapping[str, str] | None = None) -> SecretStr:
    """``api_key_file``, else ``SALESHANDY_API_KEY``, else dlt's secrets (else the simulator's).

    Raises:
        ConfigError: no key anywhere, or an unreadable key file.
    """
    env = os.environ if env is None else env
    if settings.api_key_file is not None or env.get(API_KEY_ENV, "").strip():
        return resolve_api_key(settings, env=env)
    # Looked up as a secret (no type given): dlt then keeps it out of its traces.
    secret: object = dlt.secrets.get(SECRET_KEY)
    if secret is not None and str(secret).strip():
        return SecretStr(str(secret).strip())
    if settings.uses_simulator:
        return SecretStr(SIMULATOR_KEY)
    raise ConfigError(
        f"no API key; set {API_KEY_ENV}, or {SECRET_KEY} in .dlt/secrets.toml "
        "(SOURCES__SALESHANDY__API_KEY), or api_key_file",
        field="api key",
    )


def _team_stats(job: _Job) -> Iterator[list[dict[str, Any]]]:
    """The resource's body: probe each key, plan the queries, yield each page's rows."""
    settings = job.settings
    with ExitStack() as stack:
        portal = stack.enter_context(start_blocking_portal())
        clients: dict[str | None, Client] = {}
        listed = dict(job.listed)
        for name, scope in scopes_of(settings):
            api = stack.enter_context(
                portal.wrap_async_context_manager(open_api(scope, record=False, key=job.keys[name]))
            )
            clients[name] = api.client
            # The probe: a refused key stops here, before any team-stats page.
            members = portal.call(api.client.team_members)
            if listed[name] is None:
                listed[name] = [member.user_id for member in members]
        ledger: dict[str, str] = {}
        if settings.catch_up:
            ledger = dlt.current.resource_state().setdefault(_LEDGER, {})

        def position(identity: str) -> dt.datetime | None:
            completed = ledger.get(identity)
            log.info("catch_up.position", completed_through=completed)
            return dt.datetime.fromisoformat(completed) if completed else None

        now = job.now or dt.datetime.now(settings.zone)
        run = portal.call(
            functools.partial(
                resolve_run, settings, listed, clients=clients, now=now, catch_up=position
            )
        )
        specs, after = run.specs, run.after
        if not specs:
            log.info("run.up_to_date", completed_through=after.isoformat() if after else None)
            return
        # With workspaces, through the router to each one's client (as in `export`).
        router = (
            WorkspaceClients({str(name): c for name, c in clients.items()})
            if settings.workspaces
            else None
        )
        first = next(iter(clients.values()))
        stream = portal.call(functools.partial(first.pages, specs, via=router))
        stack.callback(portal.call, stream.aclose)
        user_id_field = settings.user_id_field
        state = dlt.current.resource_state()
        state.pop(_INCOMPLETE, None)
        try:
            while (page := portal.call(_next_page, stream)) is not None:
                yield rows(page, user_id_field=user_id_field)
        except IncompleteRunError as exc:
            error = IncompleteExtractError(exc.summary, specs)
            if job.on_incomplete == "raise":
                raise error from None
            # Load what arrived; the position stays, so the next run fetches these windows again.
            state[_INCOMPLETE] = {"message": error.message, "missing": error.missing}
            log.warning("run.incomplete", missing=len(error.missing), message=error.message)
            return
        if settings.catch_up:
            completed = max(spec.end for spec in specs).isoformat(timespec="milliseconds")
            ledger[run.identity] = completed


async def _next_page(stream: PageStream) -> Page | None:
    """The next page, or ``None`` at the end (a portal cannot carry StopAsyncIteration)."""
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


def rows(page: Page, *, user_id_field: str = "userId") -> list[dict[str, Any]]:
    """One page as dlt rows: the key columns first, then the record's own fields.

    The record's user id field becomes ``user_id`` (moved, not copied); every other
    field keeps its API name for dlt to normalise.
    """
    spec = page.query
    key: dict[str, Any] = {
        "window_start": spec.start,
        "window_end": spec.end,
        "type": spec.type,
        "count_by": spec.count_by,
    }
    if spec.workspace is not None:
        key = {"workspace": spec.workspace, **key}
    out = []
    for record in page.records:
        fields = dict(record)
        user_id = fields.pop(user_id_field, None)
        out.append({**key, "user_id": user_id, **fields} | key)
    return out
