"""Settings into a run: the users, the job's identity, where ``--catch-up`` starts, the queries.

``fetcher export`` (:mod:`fetcher.app.job`), ``fetcher plan``
(:mod:`fetcher.app.plan`) and ``fetcher enqueue``
(:mod:`fetcher.app.distributed`) resolve a run the same way, so the plan
shows the queries the export will send and the units are those queries. In
two steps, because what can be checked without the network must fail before
the first request:

1. :func:`preflight`: for each scope (each workspace, or the settings
   themselves), the users given (or ``None``: ask for the team list), and the
   window, from the settings alone;
2. :func:`resolve_run`: with a client per scope for the team lists, the job's
   identity, the catch-up position from the state file's ledger, and the
   queries, the workspaces taking turns so that a pool's first queries are on
   every key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from fetcher.errors import ConfigError

if TYPE_CHECKING:
    from fetcher.app.settings import ExportSettings
    from fetcher.http.client import PageClient
    from fetcher.spec import QuerySpec

__all__ = [
    "CatchUp",
    "ResolvedRun",
    "Scope",
    "catch_up_from",
    "preflight",
    "resolve_run",
    "scopes_of",
]

log = structlog.get_logger("fetcher.app.resolve")

#: Where ``--catch-up`` starts for a job identity: the end of its last completed
#: window, or ``None`` (its first run). The state file's ledger by default; the dlt
#: source keeps it in dlt's state.
CatchUp = Callable[[str], "dt.datetime | None"]

#: A workspace's name (``None`` without workspaces) and the settings as it sees them.
Scope = tuple["str | None", "ExportSettings"]


@dataclass(frozen=True, slots=True)
class ResolvedRun:
    """What an export of these settings sends.

    Attributes:
        users_of: every user of each scope, in order (``None``: no workspaces).
        identity: the job's identity (settings that pick the rows, not the output).
        after: with ``--catch-up``, the end of the last window this job completed.
        specs: the queries; empty when catch-up finds nothing new.
    """

    users_of: dict[str | None, list[str]]
    identity: str
    after: dt.datetime | None
    specs: list[QuerySpec]

    @property
    def users(self) -> list[str]:
        """Every user of the run, scope after scope."""
        return [user for users in self.users_of.values() for user in users]


def scopes_of(settings: ExportSettings) -> list[Scope]:
    """Each workspace as it sees the settings (its URL, users, rate); else the settings."""
    workspaces = settings.workspaces or []
    return [(w.name, settings.for_workspace(w)) for w in workspaces] or [(None, settings)]


def preflight(
    settings: ExportSettings, *, now: dt.datetime | None = None
) -> dict[str | None, list[str] | None]:
    """Check what needs no request; per scope the users given, or ``None`` for the team's.

    Raises:
        ConfigError: a bad users file or window, before any request.
    """
    listed = {name: None if s.needs_team_list else s.user_ids() for name, s in scopes_of(settings)}
    settings.slices(now=now)  # a bad window fails here, before any team list is asked for
    return listed


async def resolve_run(
    settings: ExportSettings,
    listed: Mapping[str | None, list[str] | None],
    *,
    clients: Mapping[str | None, PageClient] | None = None,
    now: dt.datetime | None = None,
    catch_up: CatchUp | None = None,
) -> ResolvedRun:
    """The run's users, identity, catch-up position and queries.

    Args:
        settings: validated settings.
        listed: from :func:`preflight`; a scope's ``None`` asks its client for the team.
        clients: the API of each scope asking for its team list.
        now: the moment relative windows are evaluated at (default: now).
        catch_up: where ``catch_up = true`` starts (default: the state file's ledger).
    """
    scopes = scopes_of(settings)
    users_of: dict[str | None, list[str]] = {}
    for name, _ in scopes:
        users = listed[name]
        if users is None:
            client = (clients or {}).get(name)
            if client is None:
                raise ValueError(
                    f"resolve_run: the team list of {name or 'the job'} needs a client"
                )
            users = [member.user_id for member in await client.team_members()]
            log.info("team.members", users=len(users), workspace=name)
        users_of[name] = users
    identity = _identity(scopes, users_of)
    after = None
    if settings.catch_up:
        after = catch_up(identity) if catch_up is not None else catch_up_from(settings, identity)
    per_scope = [
        scope.queries(users_of[name], now=now, after=after, workspace=name)
        for name, scope in scopes
    ]
    # The workspaces take turns, so the pool's first queries are on every key.
    specs = [
        spec for turn in itertools.zip_longest(*per_scope) for spec in turn if spec is not None
    ]
    return ResolvedRun(users_of, identity, after, specs)


def _identity(scopes: list[Scope], users_of: Mapping[str | None, list[str]]) -> str:
    """The catch-up ledger's key: the job's, or with workspaces, all of theirs together."""
    if len(scopes) == 1 and scopes[0][0] is None:
        return scopes[0][1].job_identity(users_of[None])
    parts = [f"{name}={scope.job_identity(users_of[name])}" for name, scope in scopes]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def catch_up_from(settings: ExportSettings, identity: str) -> dt.datetime | None:
    """The end of the last window this job completed, from the state's ledger.

    Raises:
        ConfigError: ``--catch-up`` without a state file to read it from.
    """
    state_path = settings.state_path
    if state_path is None:
        raise ConfigError("--catch-up needs a state file; pass --state PATH", field="--catch-up")
    from fetcher.run.checkpoint import RunState  # noqa: PLC0415  (only with --catch-up)

    state = RunState.load(state_path)
    completed = state.ledger.get(identity) if state else None
    if completed is None:
        log.info("catch_up.first_run", state=str(state_path))
        return None
    log.info("catch_up.resuming_after", completed_through=completed)
    return dt.datetime.fromisoformat(completed)
