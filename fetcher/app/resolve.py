"""Settings into a run: the users, the job's identity, where ``--catch-up`` starts, the queries.

``fetcher export`` (:mod:`fetcher.app.job`) and ``fetcher plan``
(:mod:`fetcher.app.plan`) resolve a run the same way, so the plan shows the
queries the export will send. In two steps, because what can be checked
without the network must fail before the first request:

1. :func:`preflight`: the users given (or ``None``: ask for the team list) and
   the window, from the settings alone;
2. :func:`resolve_run`: with a client for the team list, the job's identity,
   the catch-up position from the state file's ledger, and the queries.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from fetcher.errors import ConfigError

if TYPE_CHECKING:
    from fetcher.app.settings import ExportSettings
    from fetcher.http.client import PageClient
    from fetcher.spec import QuerySpec

__all__ = ["ResolvedRun", "catch_up_from", "preflight", "resolve_run"]

log = structlog.get_logger("fetcher.app.resolve")


@dataclass(frozen=True, slots=True)
class ResolvedRun:
    """What an export of these settings sends.

    Attributes:
        users: every user of the run, in order.
        identity: the job's identity (settings that pick the rows, not the output).
        after: with ``--catch-up``, the end of the last window this job completed.
        specs: the queries; empty when catch-up finds nothing new.
    """

    users: list[str]
    identity: str
    after: dt.datetime | None
    specs: list[QuerySpec]


def preflight(settings: ExportSettings, *, now: dt.datetime | None = None) -> list[str] | None:
    """Check what needs no request; the users given, or ``None`` for every team member.

    Raises:
        ConfigError: a bad users file or window, before any request.
    """
    users = None if settings.needs_team_list else settings.user_ids()
    settings.slices(now=now)  # a bad window fails here, before the team list is asked for
    return users


async def resolve_run(
    settings: ExportSettings,
    users: list[str] | None,
    *,
    client: PageClient | None = None,
    now: dt.datetime | None = None,
) -> ResolvedRun:
    """The run's users, identity, catch-up position and queries.

    Args:
        settings: validated settings.
        users: from :func:`preflight`; ``None`` asks ``client`` for the team list.
        client: the API, for the team list (not needed when ``users`` is given).
        now: the moment relative windows are evaluated at (default: now).
    """
    if users is None:
        if client is None:
            raise ValueError("resolve_run: the team list needs a client")
        users = [member.user_id for member in await client.team_members()]
        log.info("team.members", users=len(users))
    identity = settings.job_identity(users)
    after = catch_up_from(settings, identity) if settings.catch_up else None
    specs = settings.queries(users, now=now, after=after)
    return ResolvedRun(users, identity, after, specs)


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
